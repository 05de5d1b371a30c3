# Universal callback (done-work-self-*): check each frame as it finishes.
#
# Prints the frame's status, the worker that ran it and how many attempts it took, so
# the job's .cb log reads as a per-frame report. A frame it cannot report on (a job the
# supervisor does not have, which qb::jobinfo answers with an empty list, or a frame not
# in the job's agenda) fails the run, saying why, rather than report nothing.
my $frame = qb::workid();
my ($job) = qb::jobinfo('-id', $qb::jobid);
die "frame $frame of job $qb::jobid: the supervisor has no job $qb::jobid (qb::jobinfo found none)\n"
    unless $job;
my ($work) = grep { $_->{name} eq $frame } @{ $job->{agenda} };
die "frame $frame of job $qb::jobid ($job->{name}): not in the job's agenda\n" unless $work;
printf "frame %s of job %d (%s): %s on %s after %d attempt(s)\n",
    $frame, $qb::jobid, $job->{name}, $work->{status}, $work->{host} || '-', $work->{count};
