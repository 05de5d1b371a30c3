"""How each callback language runs: qube code strings and mail in the executor, Python and Perl in a child.

``qube`` (the qube language) and ``mail`` (its mailed reports) run in the executor's own
process; ``child`` says how the sandbox starts a Python or Perl child.
"""
