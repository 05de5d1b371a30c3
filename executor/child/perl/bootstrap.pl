#!/usr/bin/perl
# Run one Perl callback inside the sandbox: bind qb, eval the code, report a done frame.
#
# The Perl counterpart of executor/child/python_bootstrap.py, exec'd by the launcher
# after the limits are applied:  perl -I<this dir> bootstrap.pl <bridge fd>
# or loaded once by the Perl zygote (zygote.pl), whose forked children call run().
#
# done frame, by how the callback ended:
#   ok         the code ran to its end (or returned)
#   exit       `exit N` in the callback (CORE::GLOBAL::exit is overridden, so it ends only
#              this child and is reported)
#   terminated SIGTERM: the executor's wall deadline or stop (which it knows of itself), or
#              a signal from anyone else (an operator's pkill); exit status 143
#   exception  an uncaught die: exception_type "die" (or the qb::Error kind, or the class
#              of a die object), message = the die message without its trailing newline,
#              traceback = the message with the callback's call stack
#   rejected   the code does not compile (syntax error, failing `use`); it never ran
# A process the callback forks sends no done frame: it exits with its own status (0 at
# the end of the code, N for `exit N`, 1 after printing an uncaught die's message).
# Perl's "Out of memory!" cannot be trapped: no done frame is sent, the executor finds
# the message on stderr. CORE::exit skips the report; the exit status then tells the
# executor.

# Every module is paid for on each cold child's start: no `use warnings` or `use
# constant` (3 ms each here); see qb.pm on the rest.
use strict;
use qb ();
# Callbacks find warnings.pm loaded (README): load it now, before the start frame, so a
# child prepared ahead has it ready instead of loading it per run.
require warnings;
# What the Perl zygote (zygote.pl) loads for itself, its children have loaded too: a cold
# child loads the same, so a callback finds the same modules loaded on both launch paths
# (POSIX::floor without `use POSIX` works on both, or on neither). POSIX brings Fcntl,
# Exporter, XSLoader, Carp and more; Errno is the zygote's `%!`. ~5 ms of CPU per cold
# start; README "Perl, qube and mail callbacks" lists them.
use Config ();
use Errno ();
use POSIX ();

sub CALLBACK_FILENAME () { '<callback>' }
sub EXIT_ON_SIGTERM ()   { 128 + 15 }
sub EXIT_ON_SIGXCPU ()   { 128 + 24 }
sub EXIT_BAD_START ()    { 2 }

my $reported = 0;
my $main_pid;    # the callback's own process: one it forks must not report for it
my $last_die;    # [error, location, stack] of the latest die, for the traceback
my $compile_die;    # [error, the errors counted before it] of the last die while compiling
my $source_hook;    # the @INC hook that hands perl the callback's code while it compiles

# Setting $| flushes a handle at once (IO::Handle's flush without loading it).
sub flush_stdio {
    my $previous = select STDOUT;
    $| = 1;
    $| = 0;
    select STDERR;
    $| = 1;
    select $previous;
    return;
}

# Each text of a done frame is cut to this, so the frame stays under the bridge's limit.
sub DONE_TEXT_CHARS () { 16 << 10 }    # JSON may spend 12 bytes on a character

sub report {
    my ($done) = @_;
    return if $reported || $$ != $main_pid;
    $reported = 1;
    # The callback may have closed or broken its own stdio; the done frame still matters.
    eval { flush_stdio(); 1 };
    my %frame = (type => 'done', %$done);
    # Strings, as protocol.DoneFrame says, even when they look like numbers (die "42"),
    # and short enough for the frame limit (the executor cuts them shorter still).
    for my $field (grep { exists $frame{$_} } qw(exception_type message traceback)) {
        $frame{$field} = qb::JSON::text(substr($frame{$field} // '', 0, DONE_TEXT_CHARS));
    }
    eval { qb::_write_frame(\%frame); 1 };
    return;
}

# `exit` anywhere in the callback (compiled after this) reports, then ends this child.
sub callback_exit (;$) {
    my $code = @_ ? $_[0] : 0;
    $code = 0 if !defined $code || $code !~ /\A\s*-?[0-9]+/;
    $code = int $code;
    report({ status => 'exit', exit_code => $code });
    CORE::exit($code);
}
BEGIN { *CORE::GLOBAL::exit = \&callback_exit }

sub _chomped {
    my ($text) = @_;
    $text =~ s/\n+\z//;
    return $text;
}

sub _same_error {
    my ($left, $right) = @_;
    return 0 if !defined $left || !defined $right;
    return !ref $right && $left eq $right if !ref $left;
    return 0 if !ref $right;
    # By address: an object's class may overload "" and nothing else, so == could die.
    require Scalar::Util;
    return Scalar::Util::refaddr($left) == Scalar::Util::refaddr($right);
}

sub _exception_type {
    my ($err) = @_;
    return 'die' if !ref $err;
    return $err->{kind} || 'qb::Error' if eval { $err->isa('qb::Error') };
    return ref $err;
}

# The die message plus where it was raised and the callback frames that led there.
sub _traceback {
    my ($err, $message) = @_;
    return $message if !$last_die || !_same_error($last_die->[0], $err);
    my ($location, @stack) = @{ $last_die->[1] };
    my $text = $message;
    $text .= " at $location" if $location && $text !~ / at \Q${\CALLBACK_FILENAME}\E line \d+/;
    return join "\n", $text, map {"\t$_"} @stack;
}

sub _record_die {
    my ($err) = @_;
    # $@ is still what it was before this die: while compiling, the errors perl counted.
    $compile_die = [ $err, $@ ] if !$qb::_started;
    my ($location, @stack);
    for (my $level = 0; my @frame = caller($level); $level++) {
        next if $frame[1] ne CALLBACK_FILENAME;
        # Frame 0 is this handler, called where the die happened.
        if (!defined $location) {
            $location = "$frame[1] line $frame[2].";
            next if $level == 0;
        }
        next if $level == 0 || $frame[3] eq '(eval)';
        push @stack, "$frame[3] called at $frame[1] line $frame[2]";
    }
    $last_die = [ $err, [ $location, @stack ] ];
    return;
}

# The callback's code is compiled as plain `perl FILE` compiles a file: `do` of a name only
# $source_hook (first in @INC) answers, handing the code over a line at a time. A string
# eval reports compile errors unlike perl: perl appends ";" to the string (an error at
# the end was a line past it), takes an error at a ";" to be "at EOF" (`my $x = ;`), and
# its `near "..."` hint quotes lines that follow. `do` compiles without this file's
# pragmas (no strict, default warnings), so the callback may `use strict` itself. For a
# hook that gives no file handle perl opens /dev/null as the file (every child has it:
# it is their stdin).
sub _compile_and_run_callback {
    my ($source) = @_;
    my @lines = split /^/, $source;
    # Before the callback's line 1: the hook leaves @INC and %INC as they were, and the
    # first statement marks that compilation is over: an error before it is the code not
    # compiling (rejected), after it a die at run time.
    my $preamble = 'package main; BEGIN { main::_forget_source_hook() } $qb::_started = 1;'
        . "\n#line 1 \"" . CALLBACK_FILENAME . "\"\n";
    $source_hook = sub {
        my (undef, $name) = @_;
        return if $name ne CALLBACK_FILENAME;
        return (\$preamble, sub { return 0 if !@lines; $_ = shift @lines; return 1 });
    };
    unshift @INC, $source_hook;
    my $name = CALLBACK_FILENAME;    # `do NAME(...)` would be an old form of sub call
    do $name;
    return $@;
}

sub _forget_source_hook {
    @INC = grep { !ref $_ || $_ != $source_hook } @INC;
    delete $INC{ +CALLBACK_FILENAME };    # plain perl has no entry for its script
    return;
}

# A compile failure as plain perl prints it. A die while compiling (a BEGIN block's, a
# failing `use`, a parser error such as an unterminated string) ends it at once, after
# the errors counted before it; otherwise perl counted errors to the end of the code and
# says it will not run it. (A callback whose BEGIN block sets $SIG{__DIE__} hides its
# dies from _record_die, and gets the second kind's last line.)
sub _compile_errors {
    my ($err) = @_;
    my $text = "$err";
    if ($compile_die && _same_error($compile_die->[0], $err)) {
        my $counted = $compile_die->[1];
        $counted = '' if !defined $counted || ref $counted;
        return index($text, $counted) == 0 ? $text : $counted . $text;
    }
    return $text . 'Execution of ' . CALLBACK_FILENAME
        . " aborted due to compilation errors.\n";
}

sub run {
    my ($fd) = @_;
    $main_pid = $$;
    open(my $bridge, '+<&=', $fd) or do {
        print STDERR "bootstrap: cannot open bridge fd $fd: $!\n";
        return EXIT_BAD_START;
    };
    binmode $bridge;
    qb::_set_bridge($bridge);
    # The executor's wall deadline, or someone else's kill: report it, and end through
    # exit so END blocks run.
    $SIG{TERM} = sub {
        report({ status => 'terminated', exit_code => EXIT_ON_SIGTERM });
        CORE::exit(EXIT_ON_SIGTERM);
    };
    if ($$ == 1) {
        # PID 1 of a namespace ignores signals it has no handler for, SIGXCPU included.
        # No done frame (report is not called): the executor reads 152 as the CPU limit.
        $SIG{XCPU} = sub { eval { flush_stdio(); 1 }; CORE::exit(EXIT_ON_SIGXCPU) };
    }
    my $start = eval { qb::_read_frame() };
    return EXIT_BAD_START if !$start || ($start->{type} // '') ne 'start';
    # The policy's variables come with the run, never through the zygote (process.py).
    if (ref $start->{env} eq 'HASH') {
        $ENV{$_} = $start->{env}{$_} for keys %{ $start->{env} };
    }
    qb::_bind($bridge, $start->{context});
    my $source = defined $start->{code} ? $start->{code} : '';

    $qb::_started = 0;
    local $SIG{__DIE__} = \&_record_die;
    my $err = _compile_and_run_callback($source);
    my $failed = ref $err || (defined $err && length $err);

    if ($failed && !$qb::_started) {
        my $message = _chomped(_compile_errors($err));
        report({
            status         => 'rejected',
            exception_type => 'CompileError',
            message        => "the callback does not compile: $message",
            traceback      => $message,
        });
        return EXIT_BAD_START;
    }
    if ($failed) {
        # A process the callback forked reports nothing (report): it ends as perl would
        # end it, with the die message on its stderr.
        print STDERR "$err" if $$ != $main_pid;
        my $message = _chomped("$err");
        report({
            status         => 'exception',
            exception_type => _exception_type($err),
            message        => $message,
            traceback      => _traceback($err, $message),
        });
        return 1;
    }
    report({ status => 'ok', exit_code => 0 });
    return 0;
}

if (!caller) {    # run as a script (the cold path), not loaded by the zygote
    @ARGV == 1 && $ARGV[0] =~ /\A[0-9]+\z/ or die "usage: bootstrap.pl <bridge fd>\n";
    $INC{'bootstrap.pl'} = __FILE__;    # as the zygote's children have it (its require)
    CORE::exit(run(shift @ARGV));    # the callback sees an empty @ARGV
}
1;
