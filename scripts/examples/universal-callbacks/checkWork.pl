# Universal callback (done-work-self-*): check each frame as it finishes.
#
# Prints the frame's status, the worker that ran it and how many attempts it took, so
# the job's .cb log reads as a per-frame report.
my $frame = qb::workid();
my ($job) = qb::jobinfo('-id', $qb::jobid);
my ($work) = grep { $_->{name} eq $frame } @{ $job->{agenda} };
printf "frame %s of job %d (%s): %s on %s after %d attempt(s)\n",
    $frame, $qb::jobid, $job->{name}, $work->{status}, $work->{host} || '-', $work->{count};
