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

# Everything below is the bootstrap's own, out of the callback's package (`main`, where
# plain perl has nothing but the script's names): its helpers are lexical subs no
# callback can name, let alone redefine, and the few names the zygote and the code's
# preamble need live in this package, taken once by reference.
package qb::Bootstrap;

sub CALLBACK_FILENAME () { '<callback>' }
sub EXIT_ON_SIGTERM ()   { 128 + 15 }
sub EXIT_ON_SIGXCPU ()   { 128 + 24 }
sub EXIT_ON_SIGPIPE ()   { 128 + 13 }
sub EXIT_BAD_START ()    { 2 }

my $reported = 0;
my $main_pid;    # the callback's own process: one it forks must not report for it
my $last_die;    # [error, location, stack] of the latest die, for the traceback
my $compile_die;    # [error, the errors counted before it] of the last die while compiling
my $source_hook;    # the @INC hook that hands perl the callback's code while it compiles
my $started;    # \ of a lexical of the code's preamble: true once its compilation is over
my ($source_text, @source_lines, $lines_given);    # the code, and how many lines perl took
my ($code_ended, $code_error);    # the code's end (run or not): the error it ended with
my $died_after_end;    # a handler of the callback's died once the code had ended

# Setting $| flushes a handle at once (IO::Handle's flush without loading it).
my sub flush_stdio {
    my $previous = select STDOUT;
    $| = 1;
    $| = 0;
    select STDERR;
    $| = 1;
    select $previous;
    return;
}

# Each text of a done frame is cut to this many characters, with a marker: never below the
# executor's bounds (256 characters, 4 KiB, 64 KiB: it cuts further, by UTF-8 bytes), and
# the frame stays under the bridge's 1 MiB (JSON may spend 12 bytes on a character).
my %DONE_TEXT_CHARS = (exception_type => 1 << 10, message => 4 << 10, traceback => 64 << 10);

# True once the frame is on the bridge (or was before): false in a process the callback
# forked, or when the callback closed or broke its bridge.
my sub report {
    my ($done) = @_;
    return 1 if $reported;
    return 0 if $$ != $main_pid;
    $reported = 1;
    # The callback may have closed or broken its own stdio, or the reader of its pipes
    # may be gone; the done frame still matters, and a write's EPIPE must not end it.
    local $SIG{PIPE} = 'IGNORE';
    eval { flush_stdio(); 1 };
    my %frame = (type => 'done', %$done);
    # Strings, as protocol.DoneFrame says, even when they look like numbers (die "42"),
    # and short enough for the frame limit (the executor cuts them shorter still).
    for my $field (grep { exists $frame{$_} } qw(exception_type message traceback)) {
        my ($text, $most) = ($frame{$field} // '', $DONE_TEXT_CHARS{$field});
        if (length($text) > $most) {
            my $left_out = length($text) - $most + 32;
            # A traceback keeps its end, as the executor's own cut of it does.
            $text = $field eq 'traceback'
              ? "\x{2026}[$left_out earlier characters]" . substr($text, $left_out)
              : substr($text, 0, $most - 32) . "\x{2026}[$left_out more characters]";
        }
        $frame{$field} = qb::JSON::text($text);
    }
    return eval { qb::_write_frame(\%frame); 1 } ? 1 : 0;
}

# perl's main() puts every signal with a %SIG handler back to its default action before
# it runs the END blocks (perlmain.c), and PID 1 ignores a signal at its default action:
# the executor's TERM (wall limit, stop) and the CPU limit's XCPU would not end an END
# block, which would then run until the grace's or the hard limit's SIGKILL. So, as the
# code ends, an END block compiled last (it runs first) hands the handlers back to the
# kernel: a TERM or XCPU then ends the END block it lands in as it ends the code (perl
# goes on to the next one, as Python to the next atexit handler). Assigning a handler
# again installs it; the same scalar (`$SIG{X} = $SIG{X}`) would not.
my $end_blocks_keep_handlers = 0;
my sub keep_handlers_in_end_blocks {
    return if $end_blocks_keep_handlers++;
    local $@;    # the callback's END blocks see the $@ they would have seen
    # CORE::ref: a callback may override CORE::GLOBAL::ref, and a die here would abort
    # the END blocks.
    eval 'END { for my $name (qw(TERM XCPU PIPE)) { my $handler = $SIG{$name};'
        . ' $SIG{$name} = $handler if CORE::ref $handler } }';
    return;
}

# A handler's exit in a DESTROY (TERM, XCPU, PIPE: run below) ends the DESTROY but not
# its object: perl leaves it half freed and calls its DESTROY again in global
# destruction, from the start, where no second signal comes to end it (it ran on to the
# grace's or the hard limit's SIGKILL). So each object whose DESTROY is under way is
# blessed into a class whose DESTROY does nothing, as Python calls a __del__ once: true
# if there was one. (@DB::args: each frame's arguments, a shifted $_[0] included, as
# Carp reads them.)
sub qb::Bootstrap::CutShort::DESTROY { }
my sub forget_destroys_under_way {
    my $found = 0;
    local ($@, $SIG{__DIE__});    # a DESTROY called by hand on \1 cannot bless it: no matter
    for (my $level = 1; my @frame = do { package DB; caller($level) }; $level++) {
        next if !$frame[4] || $frame[3] !~ /::DESTROY\z/;
        $found = 1;
        my $object = $DB::args[0];
        eval { bless $object, 'qb::Bootstrap::CutShort' } if ref $object;
    }
    return $found;
}

# perl may also run a handler just after a DESTROY has returned, before it has freed the
# object (the signal came in the DESTROY's last statement, a sleep): no frame names the
# DESTROY then, only the void eval perl calls it in, entered at the statement the handler
# runs at. An exit there would leave that object half freed all the same, so the handler
# comes back once perl is done with it: it sends its signal again, which perl hands it
# at the next statement. Once per signal: a one-line `eval { ...; ... };` looks the same,
# and one more of its statements then runs first. Not in global destruction, where the
# exit ends the process there and then (and no statement may follow).
my %came_back;    # signal name => 1 once its handler came back for a returned DESTROY

# For a handler about to end the run (called by it, as its first statement): undef when
# it is to return and come back, else whether it cuts a DESTROY short.
my sub ending_in_a_destroy {
    my ($signal) = @_;
    # 0: this sub, 1: the handler, 2: the eval perl calls it in, 3: what it interrupted.
    my @handler_call = caller 2;
    my @interrupted = caller 3;
    my $after_a_return = @interrupted && $handler_call[3] eq '(eval)'
        && $interrupted[3] eq '(eval)' && !defined $interrupted[5] && !defined $interrupted[6]
        && $handler_call[1] eq $interrupted[1] && $handler_call[2] == $interrupted[2]
        # perl calls each END block in such an eval too, from no statement (line 0): a
        # signal handed over as an END block returns (its last statement a sleep) frees
        # no object. It ends the run there, not at the next END block's first statement.
        && ($interrupted[2] || ${^GLOBAL_PHASE} ne 'END');
    if ($after_a_return && !$came_back{$signal} && ${^GLOBAL_PHASE} ne 'DESTRUCT') {
        $came_back{$signal} = 1;
        return undef if kill $signal, $$;
    }
    return 1 if forget_destroys_under_way();
    # Back, and out of that eval: it was a DESTROY's (in global destruction, not back).
    return $came_back{$signal} ? !$after_a_return : $after_a_return;
}

# `exit` anywhere in the callback (compiled after this) reports, then ends this child.
my sub callback_exit (;$) {
    my $code = @_ ? $_[0] : 0;
    $code = 0 if !defined $code || $code !~ /\A\s*-?[0-9]+/;
    $code = int $code;
    report({ status => 'exit', exit_code => $code });
    keep_handlers_in_end_blocks();
    CORE::exit($code);
}
*CORE::GLOBAL::exit = \&callback_exit;    # as this file runs: before any callback compiles

# $^S as plain perl has it for the callback's code (0 at its top level, 1 in an eval), so
# that a die hook's `return if $^S` (perlvar's guard) acts on an uncaught die: perl's own
# reads 1 throughout, the code running under this file's evals and `do`. So $^S is tied:
# perl's value where an eval of the callback's own is the innermost (eval, a signal
# handler's or a DESTROY's), 0 where none lies between the read and the code's `do` frame;
# a required file's frame takes the state around it, as in perl (caller tells a `do FILE`
# of the callback's from a require by nothing: its file reads as a required one's).
package qb::Bootstrap::EvalState {
    my $perls = \$^S;    # perl's own, still read through the magic of its scalar
    sub TIESCALAR { my $state; return bless \$state, $_[0] }
    sub FETCH {
        my $state = $$perls;
        return $state if !$state;    # undef while compiling, 0 outside any eval
        for (my $level = 1; my @frame = caller $level; $level++) {
            next if $frame[3] ne '(eval)';
            return $state if !$frame[7];    # an eval block or string, a handler's eval
            next if $frame[6] ne qb::Bootstrap::CALLBACK_FILENAME
                || $frame[1] ne qb::Bootstrap::CALLBACK_FILENAME;
            return 0;    # the code's own `do`: no eval of the callback's around the read
        }
        return $state;    # not in the code's run (an END block, the report)
    }
    sub STORE {
        my (undef, $file, $line) = caller;
        die "Modification of a read-only value attempted at $file line $line.\n";
    }
}
{
    no strict 'refs';
    *{"main::\cS"} = \my $eval_state;
    tie $eval_state, 'qb::Bootstrap::EvalState';
}

my sub _chomped {
    my ($text) = @_;
    $text =~ s/\n+\z//;
    return $text;
}

# "$err", which never dies: an object whose "" overload dies is its plain reference
# (Foo=HASH(0x...)) with a note, as the Python bootstrap's "<its str() raised>".
my sub _error_text {
    my ($err) = @_;
    my $text = eval { local $SIG{__DIE__}; "$err" };    # not the callback's die to record
    return $text if defined $text;
    no overloading;
    return "$err <its stringification died>";
}

my sub _same_error {
    my ($left, $right) = @_;
    return 0 if !defined $left || !defined $right;
    return !ref $right && $left eq $right if !ref $left;
    return 0 if !ref $right;
    # By address, overloading off: an object's class may overload "" and nothing else, so
    # == could die. No module: the callback may have emptied @INC (Scalar::Util's refaddr).
    no overloading;
    return $left == $right;
}

my sub _is_error {
    my ($err) = @_;
    return ref $err || (defined $err && length $err);
}

my sub _callback_started { return $started && $$started }

my sub _exception_type {
    my ($err) = @_;
    return 'die' if !ref $err;
    return $err->{kind} || 'qb::Error' if eval { $err->isa('qb::Error') };
    return ref $err;
}

# The die message as plain perl prints it (a message without a newline holds its line
# already; one with a newline, a reference or an object gets none), then the callback
# frames that led there.
my sub _traceback {
    my ($err, $message) = @_;
    return $message if !$last_die || !_same_error($last_die->[0], $err);
    my (undef, @stack) = @{ $last_die->[1] };
    return join "\n", $message, map {"\t$_"} @stack;
}

my sub _record_die {
    my ($err) = @_;
    # Once the code has ended, only the die that ends the run: the code's own, else the
    # first a signal handler of the callback's died with (see _run_callback).
    return if $code_ended && (_is_error($code_error) || $died_after_end++);
    # $@ is still what it was before this die: while compiling, the errors perl counted.
    $compile_die = [ $err, $@ ] if !_callback_started();
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

# The line of the code's last statement, as near as a look at its lines tells: the last
# one with more than blanks or a comment, outside POD and before `__END__`/`__DATA__`.
my sub _last_code_line {
    my ($last, $in_pod) = (1, 0);
    for my $index (0 .. $#source_lines) {
        my $line = $source_lines[$index];
        if ($line =~ /\A=([a-zA-Z]\w*)/) {
            $in_pod = $1 ne 'cut';
            next;
        }
        next if $in_pod;
        last if $line =~ /\A__(?:END|DATA)__\b/;
        $last = $index + 1 if $line =~ /\A\s*[^\s#]/;
    }
    return $last;
}

# The callback's code is compiled as plain `perl FILE` compiles a file: `do` of a name only
# $source_hook (first in @INC) answers, handing the code over a line at a time. A string
# eval reports compile errors unlike perl: perl appends ";" to the string (an error at
# the end was a line past it), takes an error at a ";" to be "at EOF" (`my $x = ;`), and
# its `near "..."` hint quotes lines that follow. `do` compiles without this file's
# pragmas (no strict, default warnings), so the callback may `use strict` itself. For a
# hook that gives no file handle perl opens /dev/null as the file (every child has it:
# it is their stdin).
my sub _compile_and_run_callback {
    my ($source, $every_signal, $mask_at_end) = @_;
    ($source_text, $lines_given, @source_lines) = ($source, 0, split(/^/, $source));
    # Before the callback's line 1: the hook leaves @INC and %INC as they were, and the
    # first statement marks that compilation is over: an error before it is the code not
    # compiling (rejected), after it a die at run time. The mark is a lexical of its own
    # block, seen by this file only (through the reference its BEGIN passes), so the
    # callback can neither name nor reset it.
    my $preamble = 'package main; { my ($s, $d);'
        . ' BEGIN { $d = qb::Bootstrap::_forget_source_hook(\\$s) } $s = 1;';
    my $has_data = $source =~ /__(?:DATA|END)__/;
    if ($has_data) {
        # DATA is a handle on the code in memory (_open_data_section): its layer is
        # loaded now, while @INC is this file's.
        require PerlIO::scalar;
        $preamble .= ' $d->();';
    }
    $preamble .= ' }';
    $preamble .= "\n#line 1 \"" . CALLBACK_FILENAME . "\"\n";
    $source_hook = sub {
        my (undef, $name) = @_;
        return if $name ne CALLBACK_FILENAME;
        return (\$preamble, sub {
            return 0 if $lines_given >= @source_lines;
            $_ = $source_lines[ $lines_given++ ];
            return 1;
        });
    };
    unshift @INC, $source_hook;
    # One statement, so no signal handler runs between the code's end and the block (perl
    # runs them at each statement): see _run_callback. It is compiled as the code's last
    # line: perl frees the code's file-scope lexicals as `do` returns, and what that says
    # (a handle it cannot flush: "unable to close filehandle $f properly") then names
    # the callback's last statement, as plain perl names the script's, not this file.
    my $run = eval sprintf("#line %d \"%s\"\n%s", _last_code_line(), CALLBACK_FILENAME,
        'sub { (do $_[0]), (${ $_[1] } = $@), (${ $_[2] } = 1),'
        . ' POSIX::sigprocmask(POSIX::SIG_BLOCK(), $_[3], $_[4]) }') or die $@;
    $run->(CALLBACK_FILENAME, \$code_error, \$code_ended, $every_signal, $mask_at_end);
    return;
}

# The DATA handle perl opened at a `__DATA__` (on /dev/null), in whichever package.
my sub _data_handle_on_dev_null {
    my ($device, $inode) = stat '/dev/null' or return;
    my @stashes = ('main::');
    my %seen;
    no strict 'refs';
    while (defined(my $stash = shift @stashes)) {
        next if $seen{$stash}++;
        for my $name (keys %$stash) {
            my $full = "$stash$name";    # qualified: this file's package is not main
            push @stashes, $stash eq 'main::' ? $name : $full if $name =~ /::\z/;
            next if $name ne 'DATA' || ref \$stash->{$name} ne 'GLOB';
            my $io = *{$full}{IO} or next;
            my @status = stat $io or next;
            return \*{$full} if $status[0] == $device && $status[1] == $inode;
        }
    }
    return;
}

# What follows `__DATA__` or `__END__` in the code, as DATA, at the start of its run. Perl
# stops taking lines from $source_hook at the marker's line and, for `__DATA__`, opens
# DATA in the package then current on the file it read: /dev/null here. `__END__` opens
# nothing in a file compiled by `do`; in plain perl's script it is main::DATA. DATA is
# then a handle on the whole code in memory, placed after the marker's line, as plain
# perl's is on the script (`seek DATA, 0, 0` reads the code), but with no descriptor.
my sub _open_data_section {
    my $marker_line = $lines_given ? $source_lines[ $lines_given - 1 ] : '';
    my $handle = _data_handle_on_dev_null();
    if (!$handle) {
        # Perl's own EOF characters (^D, ^Z) stop it too, and open nothing.
        return if $marker_line !~ /__END__/;
        return if $lines_given == @source_lines && $marker_line !~ /\A\s*__END__\s*\z/;
        $handle = \*main::DATA;
    }
    my $offset = 0;
    $offset += length $source_lines[$_] for 0 .. $lines_given - 1;
    my $code = $source_text;
    open($handle, '<', \$code) or return;
    seek($handle, $offset, 0);
    return;
}

# Called by name from the preamble's BEGIN, before perl reads a line of the callback's
# code (which cannot have redefined it yet): the preamble's mark, and the DATA opener its
# run calls through a lexical of its own.
sub _forget_source_hook {
    $started //= $_[0];    # the preamble's: a later call (the callback's) changes nothing
    @INC = grep { !ref $_ || $_ != $source_hook } @INC;
    delete $INC{ +CALLBACK_FILENAME };    # plain perl has no entry for its script
    return \&_open_data_section;
}

# Once the code has ended, the signals whose handlers are the bootstrap's keep them;
# these get their default action back (perl's default for the rest would end the run).
my %DEFAULT_AFTER_THE_RUN = map { $_ => 1 }
    qw(CHLD CLD URG WINCH CONT SEGV BUS FPE ILL ABRT IOT SYS TRAP);

# Every signal the callback has a %SIG handler for gets "IGNORE" (or "DEFAULT", above),
# TERM, XCPU and PIPE the handlers the run started with, and __DIE__ this file's recorder: a
# timer left running, or a signal from elsewhere, no longer runs the callback's code
# while the run is reported, nor in its END blocks. Then the signals are unblocked.
# Each call does what is left (a handler due before the block may die at any statement).
my sub _set_handlers_aside {
    my ($kept, $every_signal, $mask_at_end) = @_;
    POSIX::sigprocmask(POSIX::SIG_BLOCK(), $every_signal);    # if the code's end did not
    for my $name (grep { !/\A__/ } keys %SIG) {
        my $handler = $SIG{$name};
        next if !ref $handler
            && (!defined $handler || $handler eq '' || $handler eq 'DEFAULT' || $handler eq 'IGNORE');
        if (exists $kept->{$name}) {
            next if _same_error($handler, $kept->{$name});
            $SIG{$name} = $kept->{$name} // 'DEFAULT';
        } else {
            $SIG{$name} = $DEFAULT_AFTER_THE_RUN{$name} ? 'DEFAULT' : 'IGNORE';
        }
    }
    $SIG{__DIE__} = \&_record_die;
    POSIX::sigprocmask(POSIX::SIG_SETMASK(), $mask_at_end);
    return;
}

# The callback's code compiled and run, its signal handlers then set aside: the error it
# ended with ('' if none). Until they are aside, a handler of the callback's may die at
# any statement (a timer left running): the run's error is the first one, the code's own,
# else a handler's, as in the Python bootstrap. The code's end blocks every signal in the
# same statement, so after it only handlers due already can die, each once; the tries
# nest so that only a third such die in a row would escape.
my sub _run_callback {
    my ($source, $kept) = @_;
    my $every_signal = POSIX::SigSet->new;
    $every_signal->fillset;
    my $mask_at_end = POSIX::SigSet->new;
    my @handler_dies;
    my ($ran, $aside) = (0, 0);
    until ($aside) {
        eval {
            until ($aside) {
                eval {
                    if (!$ran) {
                        $ran = 1;
                        _compile_and_run_callback($source, $every_signal, $mask_at_end);
                    }
                    _set_handlers_aside($kept, $every_signal, $mask_at_end);
                    $aside = 1;
                    1;
                } or push @handler_dies, $@;
            }
            1;
        } or push @handler_dies, $@;
    }
    return $code_error if _is_error($code_error);
    return @handler_dies ? $handler_dies[0] : $code_error;
}

# A compile failure as plain perl prints it. A die while compiling (a BEGIN block's, a
# failing `use`, a parser error such as an unterminated string) ends it at once, after
# the errors counted before it; otherwise perl counted errors to the end of the code and
# says it will not run it. (A callback whose BEGIN block sets $SIG{__DIE__} hides its
# dies from _record_die, and gets the second kind's last line.)
my sub _compile_errors {
    my ($err) = @_;
    my $text = _error_text($err);
    if ($compile_die && _same_error($compile_die->[0], $err)) {
        my $counted = $compile_die->[1];
        $counted = '' if !defined $counted || ref $counted;
        return index($text, $counted) == 0 ? $text : $counted . $text;
    }
    return $text . 'Execution of ' . CALLBACK_FILENAME
        . " aborted due to compilation errors.\n";
}

my sub run {
    my ($fd) = @_;
    $main_pid = $$;
    open(my $bridge, '+<&=', $fd) or do {
        print STDERR "bootstrap: cannot open bridge fd $fd: $!\n";
        return EXIT_BAD_START;
    };
    binmode $bridge;
    qb::_set_bridge($bridge);
    # The executor's wall deadline, or someone else's kill: report it, and end through
    # exit so END blocks run. In an END block, exit ends that block (then perl runs the
    # next), in a DESTROY that DESTROY: said in one line, as the Python bootstrap says it
    # of an atexit handler or a __del__.
    $SIG{TERM} = sub {
        my $in_a_destroy = ending_in_a_destroy('TERM') // return;
        report({ status => 'terminated', exit_code => EXIT_ON_SIGTERM });
        my $cut_short = $in_a_destroy ? 'DESTROY'
            : ${^GLOBAL_PHASE} eq 'END' ? 'END block' : undef;
        if (defined $cut_short) {
            local $SIG{PIPE} = 'IGNORE';
            print STDERR "$cut_short was cut short: the run was stopped (SIGTERM)\n";
        }
        CORE::exit(EXIT_ON_SIGTERM);
    };
    if ($$ == 1) {
        # PID 1 of a namespace ignores signals it has no handler for, SIGXCPU included.
        # No done frame (report is not called): the executor reads 152 as the CPU limit.
        $SIG{XCPU} = sub {
            defined ending_in_a_destroy('XCPU') or return;
            eval { flush_stdio(); 1 };
            CORE::exit(EXIT_ON_SIGXCPU);
        };
    }
    # A write with no reader ends plain perl (SIGPIPE); this process inherited the signal
    # ignored (the executor is Python), and as PID 1 would ignore its default action: a
    # handler ends it with the status a shell gives SIGPIPE's death, no done frame sent,
    # with or without a PID namespace (one outcome, FAILED, not KILLED in some tiers).
    # The bootstrap's own writes ignore it (report).
    $SIG{PIPE} = sub {
        defined ending_in_a_destroy('PIPE') or return;
        local $SIG{PIPE} = 'IGNORE';
        eval { flush_stdio(); 1 };
        CORE::exit(EXIT_ON_SIGPIPE);
    };
    my $start = eval { qb::_read_frame() };
    return EXIT_BAD_START if !$start || ($start->{type} // '') ne 'start';
    # The policy's variables come with the run, never through the zygote (process.py).
    if (ref $start->{env} eq 'HASH') {
        $ENV{$_} = $start->{env}{$_} for keys %{ $start->{env} };
    }
    qb::_bind($bridge, $start->{context});
    # A gated run waits for the executor's go, which it sends once it has decided that
    # the run may happen (protocol.py): the bridge ending first, the code never runs.
    if ($start->{gated}) {
        my $go = eval { qb::_read_frame() };
        return EXIT_BAD_START if !$go || ($go->{type} // '') ne 'go';
    }
    my $source = defined $start->{code} ? $start->{code} : '';

    my %kept = (TERM => $SIG{TERM}, XCPU => $SIG{XCPU}, PIPE => $SIG{PIPE});    # after the run
    local $SIG{__DIE__} = \&_record_die;
    my $err = _run_callback($source, \%kept);
    keep_handlers_in_end_blocks();

    # What plain perl would print on stderr goes there when no frame says it: in a
    # process the callback forked (report sends nothing), or when the callback closed or
    # broke its bridge (the exit status is then all the executor has).
    if (_is_error($err) && !_callback_started()) {
        my $errors = _compile_errors($err);
        my $message = _chomped($errors);
        print STDERR $errors if !report({
            status         => 'rejected',
            exception_type => 'CompileError',
            message        => "the callback does not compile: $message",
            traceback      => $message,
        });
        return EXIT_BAD_START;
    }
    if (_is_error($err)) {
        my $text = _error_text($err);
        my $message = _chomped($text);
        print STDERR $text if !report({
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

# For zygote.pl, which takes them by reference once it has loaded this file.
*run = \&run;
*flush_stdio = \&flush_stdio;

if (!caller) {    # run as a script (the cold path), not loaded by the zygote
    @ARGV == 1 && $ARGV[0] =~ /\A[0-9]+\z/ or die "usage: bootstrap.pl <bridge fd>\n";
    # The exec of perl made this process dumpable again, and with it /proc/self's files
    # the callback's: writing 5 to clear_refs would reset the peak RSS its usage reports.
    # prctl(PR_SET_DUMPABLE, 0), by number (the filter knows these two architectures).
    my %prctl = (x86_64 => 157, aarch64 => 167);
    my ($arch) = $Config::Config{archname} =~ /\A(x86_64|aarch64)/;
    if ($arch) {
        syscall($prctl{$arch}, 4, 0, 0, 0, 0) == 0 or die "bootstrap.pl: prctl: $!\n";
    }
    $INC{'bootstrap.pl'} = __FILE__;    # as the zygote's children have it (its require)
    CORE::exit(run(shift @ARGV));    # the callback sees an empty @ARGV
}
1;
