"""What a supervisor imports: the executor client, and the embedded reference supervisor."""
