#!/usr/bin/perl
# Warm fork server for Perl callbacks: the Perl counterpart of executor/child/zygote.py.
#
# Why: a Perl child started from scratch spends ~7 ms of CPU compiling warnings.pm,
# qb.pm and bootstrap.pl before it can take its start frame, and its exec tears down a
# forked Python. This process compiles them once; each callback is a fork of it.
#
#   perl -I<this dir> zygote.pl CONTROL_FD [--private-network]
#
# Same control protocol as zygote.py, on a SOCK_SEQPACKET socket:
#   executor -> zygote  the cell's part of the launch spec {...} (JSON, the same for each
#                       child of a cell: decoded once, %cell_specs), a newline, then
#                       ID\0WARM_UP\0WORKDIR\0NAME=value\0... (protocol.encode_spawn),
#                       with SCM_RIGHTS fds [stdout_w, stderr_w, bridge]
#                       or "ping" (no fds), answered {"type":"pong"} at once: the
#                       executor's watchdog, while this process owes it answers
#   zygote -> executor  {"type":"started","id":N,"pid":P} | {"type":"failed","id":N,...}
#                       {"type":"exited","pid":P,"status":S,"cpu":C,"maxrss_kib":K}
# This process's end of the socket blocks, as zygote.py's: a report that finds it full
# waits for the executor to read the ones before it (syswrite never sees EAGAIN).
#
# Each child is confined as executor/child/launcher.py confines a Python one, step for
# step and with the same spec: new session, stdin from /dev/null, the passed stdout,
# stderr and bridge (as fd 3) and no other fd, the given environment, the cell's
# cgroups, no new privileges, death with its parent; forked straight into a fresh PID
# namespace (PID 1 there) with a new IPC namespace and a cgroup namespace, then the
# hardened tier's mounts and uid (isolation.py), umask 077, the rlimits and last the
# syscall filter (seccomp.py's program, from the spec: the closing part of it, on top of
# the one this process put itself under; see children_filter); then bootstrap.pl's run().
# With --private-network each cell has an empty network namespace of its own, made on
# its first child and entered (setns) before each of its children is forked.
#
# Core Perl has no recvmsg, wait4, prctl, unshare or mount: they are made with
# syscall(), by their Linux numbers (x86_64 and aarch64 below).

use strict;

# bootstrap.pl (and with it qb.pm, warnings.pm, and the Config and POSIX this process
# uses) compiled once, for every child.
# Its run and flush_stdio taken by reference now: a callback that redefines the names
# (qb::Bootstrap::...) changes nothing for its own process's end.
my ($bootstrap_run, $flush_stdio);
BEGIN {
    require 'bootstrap.pl';
    ($bootstrap_run, $flush_stdio) = (\&qb::Bootstrap::run, \&qb::Bootstrap::flush_stdio);
}

# The end mark (launcher.py's mark_end): in a child whose run returned, once its
# callback's END blocks have run (compiled later, they run first) and its output is
# flushed, shut the bridge down for writing: the executor answers at once, then kills
# and reaps. Only in the callback's own process (the one that ran bootstrap.pl's run, its
# pid here): a process it forked, even from an END block, ends without the mark. And only
# while $? is still the status run() returned: as in plain perl, an END block that set
# $? decides the exit status, which the executor then waits for (the mark would have it
# take the status the done frame implies).
#
# Without the mark, the bridge stays open until the kernel closes it at the exit, after
# the process's memory is gone: perl would close it in global destruction, and an EOF
# after the done frame from a process still readable in /proc is taken for the mark.
# Lexicals, so that a callback (in main) cannot reset them.
my ($callback_pid, $run_status) = (0, undef);    # the status once run() has returned
END {
    if ($$ == $callback_pid && defined $run_status && $? == $run_status) {
        local $SIG{PIPE} = 'IGNORE';    # the mark is sent whoever reads the output
        eval { $flush_stdio->(); 1 };
        # Then wait until the executor closes its side (or kills this process): it
        # reads this process's figures in /proc meanwhile. On the bridge's own handle:
        # a second one on its fd would close it, and global destruction again (a warning).
        my $bridge = qb::_bridge();
        if ($bridge && shutdown($bridge, 1)) {
            1 while sysread($bridge, my $ignored, 4096);
        }
    } elsif ($$ == $callback_pid) {
        POSIX::dup(qb::Zygote::BRIDGE_FD());    # a descriptor perl does not know of
    }
}

package qb::Zygote;

use strict;

my %SYSCALLS = (
    x86_64 => {
        recvmsg => 47, wait4 => 61, setrlimit => 160, prctl => 157, unshare => 272,
        setns => 308, mount => 165, umount2 => 166, setgroups => 116, setresuid => 117,
        setresgid => 119, close_range => 436, signalfd4 => 289, ppoll => 271,
    },
    aarch64 => {
        recvmsg => 212, wait4 => 260, setrlimit => 164, prctl => 167, unshare => 97,
        setns => 268, mount => 40, umount2 => 39, setgroups => 159, setresuid => 147,
        setresgid => 149, close_range => 436, signalfd4 => 74, ppoll => 73,
    },
);
my ($ARCH) = $Config::Config{archname} =~ /\A(x86_64|aarch64)/
    or die "perl zygote: no syscall table for $Config::Config{archname}\n";
my $SYS = $SYSCALLS{$ARCH};

sub CLONE_NEWNS ()          { 0x00020000 }
sub CLONE_NEWCGROUP ()      { 0x02000000 }
sub CLONE_NEWIPC ()         { 0x08000000 }
sub CLONE_NEWPID ()         { 0x20000000 }
sub CLONE_NEWNET ()         { 0x40000000 }
sub PR_SET_PDEATHSIG ()     { 1 }
sub PR_SET_DUMPABLE ()      { 4 }
sub PR_SET_NO_NEW_PRIVS ()  { 38 }
sub PR_SET_SECCOMP ()       { 22 }
sub SECCOMP_MODE_FILTER ()  { 2 }
sub MS_NOSUID ()            { 2 }
sub MS_NODEV ()             { 4 }
sub MS_NOEXEC ()            { 8 }
sub MS_BIND ()              { 4096 }
sub MS_REC ()               { 16384 }
sub MS_PRIVATE ()           { 1 << 18 }
sub MS_SLAVE ()             { 1 << 19 }
sub MNT_DETACH ()           { 2 }
sub UMOUNT_NOFOLLOW ()      { 8 }
sub O_PATH ()               { 0x200000 }
sub MSG_CMSG_CLOEXEC ()     { 0x40000000 }
sub WNOHANG ()              { 1 }
sub SIGKILL ()              { 9 }
sub BRIDGE_FD ()            { 3 }
sub MAX_MESSAGE ()          { 64 << 10 }    # spawner.py's
sub EXIT_LAUNCH_FAILED ()   { 121 }    # launcher.py's: the callback never started
sub MAX_WORKDIR_FILES ()    { 65536 }  # isolation.py's
sub SFD_NONBLOCK ()         { 0x800 }
sub SFD_CLOEXEC ()          { 0x80000 }
my %RLIMIT = (CPU => 0, FSIZE => 1, DATA => 2, STACK => 3, CORE => 4, RSS => 5,
    NPROC => 6, NOFILE => 7, MEMLOCK => 8, AS => 9);

sub sys {
    my ($name, @args) = @_;
    my $result = syscall($SYS->{$name}, @args);
    die "$name: $!\n" if $result == -1;
    return $result;
}

# -- control socket -----------------------------------------------------------------------

my $buffer = "\0" x MAX_MESSAGE;    # reused: recvmsg writes into it in place

# One message and the fds that came with it; '' when the executor has gone.
sub receive {
    my ($control_fd) = @_;
    my $space = "\0" x 64;    # room for a cmsghdr and a few ints
    my $iov = pack('pQ', $buffer, MAX_MESSAGE);
    my $header = pack('QLx4pQpQix4', 0, 0, $iov, 1, $space, length $space, 0);
    my $got = syscall($SYS->{recvmsg}, $control_fd, $header, MSG_CMSG_CLOEXEC);
    return undef if $got == -1;
    my $control_length = unpack('x40Q', $header);
    my @fds;
    if ($control_length >= 16) {
        my ($length, $level, $type) = unpack('Qii', $space);
        @fds = unpack('i*', substr($space, 16, $length - 16)) if $level == 1 && $type == 1;
    }
    return (substr($buffer, 0, $got), @fds);
}

sub send_message {
    my ($control, $message) = @_;
    my $json = qb::JSON::encode($message);
    defined syswrite($control, $json) or die "perl zygote: control socket: $!\n";
    return;
}

# -- reaping --------------------------------------------------------------------------------

my %children;

sub reap {
    my ($control) = @_;
    while (%children) {
        my $status = pack('i', 0);
        my $usage = "\0" x 144;
        my $pid = syscall($SYS->{wait4}, -1, $status, WNOHANG, $usage);
        return if $pid <= 0;
        delete $children{$pid};
        my ($user_s, $user_us, $system_s, $system_us, $maxrss) = unpack('q5', $usage);
        send_message($control, {
            type => 'exited', pid => $pid, status => unpack('i', $status),
            cpu => $user_s + $system_s + ($user_us + $system_us) / 1e6,
            maxrss_kib => $maxrss,
        });
    }
    return;
}

# -- confinement, in the child ------------------------------------------------------------

sub close_from {
    my ($first) = @_;
    return if syscall($SYS->{close_range}, $first, 0xFFFFFFFF, 0) == 0;
    die "close_range: $!\n" if !$!{ENOSYS};    # kernels before 5.9: one by one
    opendir(my $fds, '/proc/self/fd') or die "/proc/self/fd: $!\n";
    my @open = grep { /\A[0-9]+\z/ && $_ >= $first } readdir $fds;
    closedir $fds;
    POSIX::close($_) for @open;
    return;
}

sub prctl { sys('prctl', $_[0], $_[1], 0, 0, 0); return }

# launcher.py's die_with_parent: the parent-death signal, set again after the uid drop
# (which cleared it), then an end here if the executor's end of the bridge is closed
# already (a parent that died before the prctl sends nothing). POLLHUP (0x10) is reported
# whatever is asked, buffered frames or not.
my $NO_WAIT = pack('qq', 0, 0);    # made before the fork: a timespec of 0
sub die_with_parent {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    my $pollfd = pack('lss', BRIDGE_FD, 0, 0);
    if (syscall($SYS->{ppoll}, $pollfd, 1, $NO_WAIT, 0, 8) == 1
        && (unpack('lss', $pollfd))[2] & 0x10) {
        POSIX::_exit(EXIT_LAUNCH_FAILED);
    }
    return;
}

sub mount {
    my ($source, $target, $fstype, $flags, $data) = @_;
    my $result = syscall($SYS->{mount}, $source // 0, $target, $fstype // 0, $flags, $data // 0);
    die "mount $target: $!\n" if $result == -1;
    return;
}

sub under {
    my ($path, $directory) = @_;
    (my $prefix = $directory) =~ s{/+\z}{};
    return $path eq $directory || index($path, "$prefix/") == 0;
}

sub make_path {
    my ($path) = @_;
    my $so_far = '';
    for my $part (grep { length } split m{/}, $path) {
        $so_far .= "/$part";
        mkdir $so_far, 0755 or $!{EEXIST} or die "mkdir $so_far: $!\n";
    }
    return;
}

# isolation.py's _mount_points: every mount point of this mount namespace, in order (the
# fifth field of /proc/self/mountinfo, its octal escapes undone).
sub mount_points {
    open(my $listing, '<', '/proc/self/mountinfo') or die "/proc/self/mountinfo: $!\n";
    my @points;
    while (my $line = <$listing>) {
        my $point = (split / /, $line)[4];
        $point =~ s/\\([0-7]{3})/chr oct $1/ge;
        push @points, $point;
    }
    close $listing;
    return @points;
}

# isolation.py's detach_hidden_mounts: every mount at or under the places detached, but
# those that hold a kept path or lie under one (bound back with what is under them).
# Only where this namespace no longer propagates to the host's. Best effort.
sub detach_hidden_mounts {
    my ($places, $keep) = @_;
    my @detached;
    for my $point (mount_points()) {
        next if !grep { under($point, $_) } @$places;
        next if grep { $point ne $_ && under($point, $_) } @detached;    # gone with it
        next if grep { under($_, $point) || under($point, $_) } @$keep;
        syscall($SYS->{umount2}, $point, MNT_DETACH | UMOUNT_NOFOLLOW);
        push @detached, $point;
    }
    return;
}

# isolation.py's _cover: an empty tmpfs over each mask, the kept paths under them bound back.
sub cover {
    my ($masks, $keep) = @_;
    my %kept;
    for my $path (@$keep) {
        next if !grep { under($path, $_) } @$masks;
        $kept{$path} = POSIX::open($path, O_PATH) // die "open $path: $!\n";
    }
    mount('tmpfs', $_, 'tmpfs', MS_NOSUID | MS_NODEV, 'mode=0755,size=64m') for @$masks;
    for my $path (sort keys %kept) {
        my $fd = $kept{$path};
        if (-d "/proc/self/fd/$fd") {
            make_path($path);
        } else {
            (my $parent = $path) =~ s{/[^/]*\z}{};
            make_path($parent);
            open(my $touch, '>>', $path) or die "create $path: $!\n";
            close $touch;
        }
        mount("/proc/self/fd/$fd", $path, undef, MS_BIND | MS_REC);
        POSIX::close($fd);
    }
    return;
}

# isolation.py's _hide: /dev/null bound over one of the executor's secret files (its
# config file, TLS key, env_files), in each child; nothing to do where the name is gone.
sub hide {
    my ($file) = @_;
    my $null = '/dev/null';    # syscall() takes its strings as writable buffers
    return if syscall($SYS->{mount}, $null, $file, 0, MS_BIND, 0) == 0;
    die "mount /dev/null on $file: $!\n" if !$!{ENOENT} && !$!{ENOTDIR};
    return;
}

# isolation.py's share_masks, once in this zygote: a mount namespace of its own (a slave
# of the host's) in which the mounts under every mask are detached (and the host's
# /dev/pts when each child mounts its own), and every mask not holding the working
# directory is covered, the late masks (the cgroup tree) too: the children join their
# cgroups through files this zygote opened (zygote.py's CellCgroupFiles), through the
# tree's directories (its own and each mount's in it) held from before they went.
my ($shared_plan, @shared_masks, %late_roots);
sub share_masks {
    my ($spec) = @_;
    my $isolation = $spec->{isolation} or return;
    my @late = @{ $isolation->{late_masks} || [] };
    my $plan = join("\0", @{ $isolation->{masks} }, '', @{ $isolation->{keep} }, '', @late);
    if (!defined $shared_plan) {
        $shared_plan = $plan;
        my @points = mount_points();
        for my $mask (@late) {
            for my $root ($mask, grep { under($_, $mask) } @points) {
                next if exists $late_roots{$root} || !-d $root;
                $late_roots{$root} = POSIX::open($root, O_PATH) // die "open $root: $!\n";
            }
        }
        sys('unshare', CLONE_NEWNS);
        mount(undef, '/', undef, MS_REC | MS_SLAVE);
        detach_hidden_mounts([@{ $isolation->{masks} }, @late,
            $isolation->{devpts} ? ('/dev/pts') : ()], $isolation->{keep});
        @shared_masks = grep { !under($spec->{workdir}, $_) } @{ $isolation->{masks} }, @late;
        cover(\@shared_masks, $isolation->{keep});
    }
    # Another plan: the child covers every mask itself.
    $isolation->{shared_masks} = $plan eq $shared_plan ? [@shared_masks] : [];
    my %shared = map { $_ => 1 } @{ $isolation->{shared_masks} };
    $isolation->{late_masks} = [grep { !$shared{$_} } @late];
    return;
}

# Each cgroup.procs file a cell joins, opened once and kept for its children.
my %cgroup_files;
sub cgroup_files {
    my ($spec) = @_;
    my @handles;
    for my $procs (@{ $spec->{cgroup_procs} || [] }) {
        my $handle = $cgroup_files{$procs};
        if (!$handle) {
            my $path = $procs;
            # The innermost held directory (the mount the file is on) and its magic link:
            # the tree as it was before the cover.
            for my $root (sort { length $b <=> length $a } keys %late_roots) {
                next if !under($procs, $root);
                $path = "/proc/self/fd/$late_roots{$root}" . substr($procs, length $root);
                last;
            }
            open($handle, '>', $path) or die "could not open $procs: $!\n";
            $cgroup_files{$procs} = $handle;
        }
        push @handles, $handle;
    }
    return \@handles;
}

# isolation.py's isolate_filesystem: private mounts, a fresh /proc, tmpfs over the masks
# (the plan lists only the outermost ones) but those the zygote shares, the kept paths
# bound back, the secret files hidden, a devpts instance of the child's own (its ptys:
# /dev/ptmx reaches it), a quota'd workdir.
sub isolate_filesystem {
    my ($plan, $workdir, $disk_bytes) = @_;
    my %shared = map { $_ => 1 } @{ $plan->{shared_masks} || [] };
    if (!%shared) {    # no zygote's namespace to copy: the detaching is this child's
        mount(undef, '/', undef, MS_REC | MS_PRIVATE);
        detach_hidden_mounts([@{ $plan->{masks} }, @{ $plan->{late_masks} || [] },
            $plan->{devpts} ? ('/dev/pts') : ()], $plan->{keep});
    }
    mount('proc', '/proc', 'proc', MS_NOSUID | MS_NODEV | MS_NOEXEC);
    # A shared mask holding the working directory is covered again (see isolation.py);
    # the late masks (the cgroup tree, joined by now) always.
    cover([(grep { !$shared{$_} || under($workdir, $_) } @{ $plan->{masks} }),
        @{ $plan->{late_masks} || [] }], $plan->{keep});
    hide($_) for @{ $plan->{secret_files} || [] };
    mount('devpts', '/dev/pts', 'devpts', MS_NOSUID | MS_NOEXEC, $plan->{devpts}) if $plan->{devpts};
    die "working directory $workdir is not under a masked directory\n"
        if !grep { under($workdir, $_) } @{ $plan->{masks} };
    make_path($workdir);
    chmod 0700, $workdir;
    mount('tmpfs', $workdir, 'tmpfs', MS_NOSUID | MS_NODEV,
        "size=$disk_bytes,nr_inodes=${\MAX_WORKDIR_FILES},mode=0700,"
        . "uid=$plan->{uid},gid=$plan->{gid}");
    return;
}

sub drop_privileges {
    my ($uid, $gid) = @_;
    sys('setgroups', 0, 0);
    sys('setresgid', $gid, $gid, $gid);
    sys('setresuid', $uid, $uid, $uid);
    return;
}

sub apply_rlimits {
    my ($rlimits) = @_;
    for my $name (sort keys %$rlimits) {
        my ($soft, $hard) = map { $_ < 0 ? ~0 : $_ } @{ $rlimits->{$name} };
        defined $RLIMIT{$name} or die "unknown rlimit $name\n";
        sys('setrlimit', $RLIMIT{$name}, pack('QQ', $soft, $hard));
    }
    return;
}

# The spec's syscall filter as a struct sock_fprog, made before the fork (launcher.py's
# prepare_filter): (its hex, the program's bytes, the sock_fprog pointing at them). The
# bytes are never changed while the pointer lives.
my ($filter_hex, $filter_program, $filter_fprog) = ('');

sub prepare_filter {
    my ($hex) = @_;
    return if !$hex || $hex eq $filter_hex;
    $filter_program = pack('H*', $hex);
    $filter_fprog = pack('S x6 p', length($filter_program) / 8, $filter_program);
    $filter_hex = $hex;
    return;
}

# zygote.py's OwnFilter: this process goes under the spec's zygote filter (the whole one,
# with the calls its children confine themselves with allowed) once, before its first
# fork under it; each child then adds the closing program of a few instructions, not
# the whole filter. Where that cannot hold, children install the whole one.
my $own_filter = '';    # its hex; '-' once the kernel refused it

sub children_filter {
    my ($spec) = @_;
    my $own = $spec->{seccomp_zygote_filter} // '';
    if ($own ne '' && $own_filter eq '') {
        my $program = pack('H*', $own);
        my $fprog = pack('S x6 p', length($program) / 8, $program);
        $own_filter = eval {
            prctl(PR_SET_NO_NEW_PRIVS, 1);
            sys('prctl', PR_SET_SECCOMP, SECCOMP_MODE_FILTER, $fprog, 0, 0);
            1;
        } ? $own : '-';
    }
    return $spec->{seccomp_closing_filter} if $own ne '' && $own eq $own_filter;
    return $spec->{seccomp_filter} // '';
}

# Each cell's empty network namespace (a handle on /proc/self/ns/net), and the one the
# next child would start in. zygote.py's CellNetworks: a cell whose namespace still holds
# a socket (one an earlier callback hid in flight, not yet freed by the kernel's garbage
# collector) gets a fresh one, so no abstract name it bound reaches the next run.
my (%cell_networks, $current_cell);

sub enter_cell_network {
    my ($cell) = @_;
    if (!defined $current_cell || $current_cell != $cell) {
        undef $current_cell;    # unknown until the calls below succeed
        if (my $network = $cell_networks{$cell}) {
            sys('setns', fileno $network, CLONE_NEWNET);
        } else {
            make_cell_network($cell);
        }
        $current_cell = $cell;
    }
    if (sockets_in_use()) {
        undef $current_cell;
        delete $cell_networks{$cell};    # closed; the namespace goes once its sockets do
        make_cell_network($cell);
        $current_cell = $cell;
    }
    return;
}

sub make_cell_network {
    my ($cell) = @_;
    sys('unshare', CLONE_NEWNET);
    open(my $made, '<', '/proc/self/ns/net') or die "own network namespace: $!\n";
    $cell_networks{$cell} = $made;
    return;
}

# How many sockets this process's network namespace holds (sockstat's "sockets: used N").
sub sockets_in_use {
    open(my $sockstat, '<', '/proc/self/net/sockstat') or die "sockstat: $!\n";
    my $first_line = <$sockstat>;
    close $sockstat;
    $first_line =~ /\Asockets: used (\d+)/ or die "sockstat: unexpected '$first_line'\n";
    return $1;
}

# launcher.py's confine_and_run, for a child this zygote forked into its PID namespace.
sub confine {
    my ($spec) = @_;
    my $isolation = $spec->{isolation};
    if (!$isolation) {
        chdir $spec->{workdir} or die "chdir $spec->{workdir}: $!\n";
    }
    prctl(PR_SET_NO_NEW_PRIVS, 1);
    die_with_parent();
    if ($spec->{pid_namespace}) {
        my $flags = ($spec->{unshare_network} ? CLONE_NEWNET : 0) | ($isolation ? CLONE_NEWNS : 0)
            | ($spec->{ipc_namespace} ? CLONE_NEWIPC : 0)
            # After joining the cgroups: rooted at the cell's, naming nothing of the executor.
            | ($spec->{cgroup_namespace} ? CLONE_NEWCGROUP : 0);
        sys('unshare', $flags) if $flags;
        if ($isolation) {
            isolate_filesystem($isolation, $spec->{workdir}, $spec->{disk_bytes});
            chdir $spec->{workdir} or die "chdir $spec->{workdir}: $!\n";
        }
    }
    # While still root (launcher.py's reason: above the executor's own hard limits).
    apply_rlimits($spec->{rlimits} || {});
    if ($spec->{pid_namespace} && $isolation) {
        drop_privileges($isolation->{uid}, $isolation->{gid});
        die_with_parent();    # the uid change cleared it
    }
    umask 077;
    # Not dumpable (as launcher.py explains: a uid change leaves it to fs.suid_dumpable).
    prctl(PR_SET_DUMPABLE, 0);
    if ($spec->{child_filter}) {
        prepare_filter($spec->{child_filter});    # made already, unless it changed
        sys('prctl', PR_SET_SECCOMP, SECCOMP_MODE_FILTER, $filter_fprog, 0, 0);
    }
    return;
}

# A cell's part of the launch spec (the JSON before the spawn message's newline), decoded
# and its masks shared once; a copy with the run's fields for each child.
my %cell_specs;
sub MAX_CELL_SPECS () { 256 }    # zygote.py's
sub cell_spec {
    my ($cell_part, $message) = @_;
    my $cached = $cell_specs{$cell_part};
    if (!defined $cached) {
        $cached = qb::JSON::decode($cell_part);
        ref $cached eq 'HASH' or die "the launch spec is not a JSON object\n";
        $cached->{workdir} = $message->{workdir};
        share_masks($cached);
        $cached->{child_filter} = children_filter($cached);
        %cell_specs = () if keys %cell_specs >= MAX_CELL_SPECS;
        $cell_specs{$cell_part} = $cached;
    }
    return { %$cached, workdir => $message->{workdir}, warm_up => $message->{warm_up} };
}

# The control socket and this process's own PID namespace, opened by serve.
my ($control, $own_namespace);

# In the forked child: take the passed fds, confine, run the callback; never returns.
sub child {
    my ($message, $stdout_w, $stderr_w, $bridge) = @_;
    my $code = EXIT_LAUNCH_FAILED;
    my $bridge_fd = $bridge;    # fd 3 once it is there
    my $ok = eval {
        POSIX::setsid() // die "setsid: $!\n";
        for my $cgroup (@{ $message->{cgroup_files} }) {
            syswrite($cgroup, '0') // die "join a cgroup: $!\n";    # this process
        }
        # The zygote's own handles, closed as handles and before the dup2s (one may hold
        # fd 3, the bridge's to be): left to close_from, each would be closed again at
        # this child's exit, in global destruction, a warning on the callback's stderr.
        close $_ for $control, $own_namespace, values %cgroup_files, values %cell_networks;
        my $devnull = POSIX::open('/dev/null', POSIX::O_RDONLY()) // die "/dev/null: $!\n";
        my @targets = ([$devnull, 0], [$stdout_w, 1], [$stderr_w, 2], [$bridge, BRIDGE_FD]);
        for (@targets) {
            my ($source, $target) = @$_;
            next if $source == $target;
            POSIX::dup2($source, $target) // die "dup2: $!\n";
        }
        $bridge_fd = BRIDGE_FD;
        close_from(BRIDGE_FD + 1);
        %ENV = %{ $message->{env} || {} };
        @ARGV = ();    # as a cold child's: the zygote's arguments are not the callback's
        confine($message->{spec});
        1;
    };
    if ($ok) {
        $callback_pid = $$;
        $code = $bootstrap_run->(BRIDGE_FD);    # bootstrap.pl: the callback's run and its report
        # Only a run that returned: an `exit`, the CPU limit's or the deadline's exit
        # through the callback's own path, is left to the exit status; and only in the
        # callback's own process (a process it forked returns here too).
        $run_status = $code if $$ == $callback_pid;
    } else {
        my $reason = "$@";
        print STDERR "perl zygote: could not start the callback: $reason";
        launch_failed($bridge_fd, $reason);
    }
    CORE::exit($code);    # END blocks and output flushing, as a cold Perl child has
}

# launcher.py's report_launch_failure: the bridge's launch_failed frame, sent only before
# the start frame is read (the executor believes it only when that frame went unread).
sub launch_failed {
    my ($fd, $reason) = @_;
    $reason =~ s/\n+\z//;
    my $body = qb::JSON::encode({ type => 'launch_failed', reason => qb::JSON::text($reason) });
    POSIX::write($fd, pack('N', length $body) . $body, 4 + length $body);
    return;
}

# -- the loop -------------------------------------------------------------------------------

# SIGCHLD as a readable fd: blocked as a signal and read through signalfd, a child's
# exit wakes select() whenever it comes (a %SIG handler runs only between Perl ops, so
# an exit just before select() would wait for the next message).
sub child_exits_fd {
    my ($blocked) = @_;
    POSIX::sigprocmask(POSIX::SIG_BLOCK(), $blocked) or die "sigprocmask: $!\n";
    my $mask = pack('Q', 1 << (POSIX::SIGCHLD() - 1));
    return sys('signalfd4', -1, $mask, length $mask, SFD_NONBLOCK | SFD_CLOEXEC);
}

sub serve {
    my ($control_fd, $private_network) = @_;
    open($control, '+<&=', $control_fd) or die "perl zygote: control fd $control_fd: $!\n";
    open($own_namespace, '<', '/proc/self/ns/pid') or die "perl zygote: own PID namespace: $!\n";
    my $sigchld = POSIX::SigSet->new(POSIX::SIGCHLD());
    my $exits_fd = child_exits_fd($sigchld);
    while (1) {
        my $wanted = '';
        vec($wanted, $_, 1) = 1 for $control_fd, $exits_fd;
        my $ready = select(my $readable = $wanted, undef, undef, undef);
        next if $ready <= 0;
        if (vec($readable, $exits_fd, 1)) {
            1 while (POSIX::read($exits_fd, my $info, 4096) // 0) > 0;    # drain the siginfos
            reap($control);
        }
        next if !vec($readable, $control_fd, 1);
        my ($data, @fds) = receive($control_fd);
        next if !defined $data && $!{EINTR};
        return if !defined $data || $data eq '';    # the executor is gone; children follow
        if ($data eq 'ping') {    # protocol.ZYGOTE_PING
            POSIX::close($_) for @fds;
            defined syswrite($control, '{"type":"pong"}') or die "perl zygote: control socket: $!\n";
            next;
        }
        my ($cell_part, $run_part) = split /\n/, $data, 2;
        my ($id, $warm_up, $workdir, @env) = split /\0/, $run_part // '', -1;
        my $message = defined $workdir && $id =~ /\A[0-9]+\z/
            ? { id => $id + 0, warm_up => $warm_up eq '1', workdir => $workdir,
                env => { map { split /=/, $_, 2 } @env } }
            : undef;
        if (ref $message ne 'HASH' || @fds != 3) {
            POSIX::close($_) for @fds;
            my $id = ref $message eq 'HASH' ? $message->{id} : undef;
            send_message($control,
                { type => 'failed', id => $id, error => 'expected a spawn message and 3 fds' });
            next;
        }
        if (!eval { $message->{spec} = cell_spec($cell_part // '', $message); 1 }) {
            # Our mounts are in an unknown state: no child may be forked from them.
            POSIX::close($_) for @fds;
            send_message($control,
                { type => 'failed', id => $message->{id}, error => "could not cover the masks: $@" });
            return;    # the executor starts a new zygote, or the cold path
        }
        if (!eval { $message->{cgroup_files} = cgroup_files($message->{spec}); 1 }) {
            POSIX::close($_) for @fds;
            send_message($control, { type => 'failed', id => $message->{id}, error => "$@" });
            next;
        }
        my $new_namespace = $message->{spec}{pid_namespace};
        my $errno = 0;    # fork's: EAGAIN is the executor's process limit (a refusal)
        my $pid = eval {
            prepare_filter($message->{spec}{child_filter});
            enter_cell_network($message->{spec}{cell} // 0) if $private_network;
            if ($new_namespace) {
                sys('setns', fileno $own_namespace, CLONE_NEWPID);
                sys('unshare', CLONE_NEWPID);
            }
            fork // do { $errno = $! + 0; die "fork: $!\n" };
        };
        my $error = $@;
        if (defined $pid && $pid == 0) {
            POSIX::sigprocmask(POSIX::SIG_UNBLOCK(), $sigchld);    # the callback's to use
            child($message, @fds);
        }
        # Whatever happened, the next child starts afresh from our own namespace.
        sys('setns', fileno $own_namespace, CLONE_NEWPID) if $new_namespace;
        POSIX::close($_) for @fds;
        if (!defined $pid) {
            send_message($control,
                { type => 'failed', id => $message->{id}, error => $error, errno => $errno });
            next;
        }
        $children{$pid} = 1;
        send_message($control, { type => 'started', id => $message->{id}, pid => $pid });
    }
}

sub main {
    my @argv = @_;
    @argv && $argv[0] =~ /\A[0-9]+\z/ or die "usage: zygote.pl CONTROL_FD [--private-network]\n";
    prctl(PR_SET_DUMPABLE, 0);    # no /proc/<pid>/mem or environ for callbacks
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    sys('setrlimit', $RLIMIT{CORE}, pack('QQ', 0, 0));
    # Out of the host's network at once; each cell gets one of its own
    # (enter_cell_network). The control socket keeps working across namespaces.
    my $private_network = grep { $_ eq '--private-network' } @argv[1 .. $#argv];
    sys('unshare', CLONE_NEWNET) if $private_network;
    serve($argv[0], $private_network);
    return 0;
}

POSIX::_exit(main(@ARGV));
