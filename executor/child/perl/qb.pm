package qb;

# The callback-scoped qb package Perl callbacks use (Qube's embedded callback API).
#
# Loaded by bootstrap.pl before the callback is compiled, so qb::... works without
# `use qb;` (which also works). The Perl counterpart of executor/child/qb.py:
# context functions answer locally; everything that reads or changes a job is one
# `call` frame to the executor (executor/host_api.py parses the arguments, so Perl,
# Python and qube callbacks behave the same) answered by a `reply` frame.
#
# Frames: a 4-byte big-endian length, then one UTF-8 JSON object (protocol.py).
#
# Strings: the callback sees bytes, as Perl does when it reads a file. Text from the
# executor arrives as UTF-8 octets; strings sent back may be bytes (UTF-8, or Latin-1
# when not valid UTF-8) or character strings (`use utf8`, "\x{263A}").
#
# A process the callback forks shares its bridge: its calls die (QbError), as two
# processes' frames on one socket would break the protocol; the context functions
# still answer in it. So do calls from a Perl thread (threads->create) other than the
# one the callback started in: threads share nothing Perl could lock around a call
# unless it was shared before they were made, and two threads' frames interleaved
# would each read the other's reply.
#
# Errors: a failed call dies with a qb::Error object (fields kind and message; it
# stringifies to "kind: message"), so `eval { qb::unblock($id) }; if ($@) {...}` works
# and `$@->{kind}` says which: one of protocol.py's QbErrorKind (PermissionDenied,
# NoSuchJob, NoSuchWork, InvalidArgument, SupervisorUnavailable, QbError), the names of
# Python's qb exceptions.
#
# No modules beyond strict: JSON::PP, POSIX and IO::Handle each cost more to load
# (14-21 ms) than the whole Perl interpreter (3 ms), so qb::JSON below is ours; even
# `use warnings` (3 ms) is left out, and so is overload (qb::Error makes its symbols).

use strict;

our $VERSION = '1.0';

# Linux's EINTR, spelled out: %! would load Errno (and Exporter), 3 ms per callback.
sub EINTR () { 4 }
our $jobid;    # the job that owns the callback, set by bootstrap.pl

# Qube time is Unix time minus this (qube-callbacks.md §7).
our $QB_TIME_EPOCH_OFFSET = 946702800;

my $bridge;
my $bound_pid = 0;    # the callback's own process, the only one whose calls go on the bridge
my %context;
my $next_call_id = 0;
# A $SIG{ALRM} handler that dies (a timeout) can end a call at any point of its
# exchange, so the exchange keeps its state here and the next call picks it up: the
# bytes read from the bridge but not yet taken as a frame (sysread appends to them, so a
# partial frame stays), and the rest of a frame cut short mid-write (sent before the
# next one). The executor answers in the order calls are sent: a reply with a lower id
# than the call's answers a call abandoned mid-wait, and is dropped. One window remains
# (as in qb.py): a die between syswrite returning and its count being kept loses track
# of those bytes, and the bridge is out of step.
my $inbox = '';
my $outbox = '';
# Whether a call is under way: a signal handler's call that interrupted it is refused
# (its frames would go between the call's frame and its reply), as qb.py refuses one.
our $_in_call = 0;
# The call under way ("qb::jobstatus"), for what a broken bridge makes it die with.
our $_calling;

# A call's own failure ends it: the flag is cleared before the die, since perl runs a
# $SIG{__DIE__} hook at the die, before `local` gives the flag back, and a hook may well
# make a call of its own (block the job on any error). A signal handler's die keeps the
# flag: the call it interrupted may still go on (a die caught in the handler).
sub _fail_call {
    my ($error) = @_;
    $_in_call = 0;
    die $error;
}

# Every job, work and instance verb of executor/host_api.py's table.
my @JOB_VERBS = qw(unblock block kill remove retry requeue preempt interrupt migrate
    suspend resume complete retire fail);
my @WORK_VERBS = qw(unblock block kill retry requeue complete retire fail);
my @SUBJOB_VERBS = qw(unblock block kill retry requeue preempt interrupt migrate
    suspend resume complete fail);    # as executor/supervisor_link.py SUBJOB_VERBS

# `use qb;` in a callback: nothing to import, everything is called as qb::name.
sub import { return }

# -- framing (private; bootstrap.pl uses these too) -------------------------------------

sub _bind {
    my ($handle, $ctx) = @_;
    $bridge = $handle;
    $bound_pid = $$;
    %context = %{ $ctx || {} };
    $jobid = defined $context{job}{id} ? 0 + $context{job}{id} : undef;
    return;
}

sub _set_bridge { $bridge = $_[0]; return }

# The bridge's handle (zygote.pl's end mark shuts it down; a second handle on its fd
# would close it twice at exit).
sub _bridge { return $bridge }

# Outgoing strings become characters so the JSON is valid UTF-8 whatever the callback
# passed: valid UTF-8 octets are decoded, other bytes are taken as Latin-1.
sub _to_text {
    my ($value) = @_;
    my $type = ref $value;
    if ($type eq 'HASH') {
        return { map { (_to_text_scalar($_), _to_text($value->{$_})) } keys %$value };
    }
    return [ map { _to_text($_) } @$value ] if $type eq 'ARRAY';
    return _to_text_scalar($value) if !$type;
    return qb::JSON::text(_to_text_scalar($$value)) if $type eq 'qb::JSON::Text';
    return $value;
}

sub _to_text_scalar {
    my ($value) = @_;
    return $value if !defined $value || utf8::is_utf8($value) || $value !~ /[\x80-\xff]/;
    my $copy = $value;
    utf8::decode($copy);    # leaves invalid UTF-8 alone: Latin-1 characters
    return $copy;
}

# protocol.py's MAX_CHILD_FRAME_BYTES: a larger frame breaks the bridge protocol and the
# executor ends the run, so a call that large is refused here (a done frame's texts are
# cut by bootstrap.pl before it gets here).
sub MAX_FRAME_BYTES () { 1 << 20 }

sub _write_frame {
    my ($message) = @_;
    my $body = qb::JSON::encode(_to_text($message));
    if (length $body > MAX_FRAME_BYTES) {
        _fail_call(qb::Error->new('InvalidArgument', "qb::$message->{fn}: the call is "
            . length($body) . ' bytes; at most ' . MAX_FRAME_BYTES . ' can be sent'))
            if ($message->{type} // '') eq 'call';
    }
    my $data = pack('N', length $body) . $body;
    # A closed bridge is a qb::Error (_write_out), not the SIGPIPE exit that bootstrap.pl
    # gives the callback's own writes to a pipe with no reader.
    local $SIG{PIPE} = 'IGNORE';
    _write_out();    # the rest of a frame an interruption cut short goes first
    # Given to $outbox inside the eval: a die just before the write is then "none of it
    # went" too, not a frame left to go out before the next one.
    return if eval { $outbox = $data; _write_out(); 1 };
    my $error = $@;
    $outbox = '' if length $outbox == length $data;    # none of it went: no answer to come
    die $error;
}

sub _write_out {
    while (length $outbox) {
        my $written = syswrite($bridge, $outbox);
        if (!defined $written) {
            next if $! == EINTR;
            _fail_call(qb::Error->new('QbError', ($_calling // 'a frame')
                . " could not be sent: the bridge to the executor is broken ($!)"));
        }
        substr($outbox, 0, $written, '');
    }
    return;
}

# A broken bridge (the callback closed or shut down fd 3) while an answer was awaited:
# worded as qb.py words it, since the call may have been applied.
sub _no_answer {
    my ($reason) = @_;
    _fail_call(qb::Error->new('QbError', "the bridge to the executor is broken ($reason)"))
        if !defined $_calling;
    _fail_call(qb::Error->new('QbError', "$_calling was sent but no answer came: the bridge to the "
        . "executor is broken ($reason); it may have been applied"));
}

# protocol.py's MAX_PARENT_FRAME_BYTES: a larger length is a bridge out of step, never
# a frame to make room for (a buffer of that size could fail as "Out of memory!").
sub MAX_PARENT_FRAME_BYTES () { 64 << 20 }

# The next frame from the executor, read through $inbox.
sub _read_frame {
    while (1) {
        my $wanted = 4;
        if (length $inbox >= 4) {
            my $size = unpack('N', $inbox);
            _fail_call(qb::Error->new('QbError', "the executor's frame of $size bytes exceeds "
                . MAX_PARENT_FRAME_BYTES . ': the bridge is out of step'))
                if $size > MAX_PARENT_FRAME_BYTES;
            $wanted = 4 + $size;
            if (length $inbox >= $wanted) {
                my $body = substr($inbox, 4, $size);
                # Interrupted from here on, the frame is gone: it answers the call the
                # interruption ends.
                substr($inbox, 0, $wanted, '');
                # Strings arrive as UTF-8 octets: the callback sees bytes, as from a file.
                my $message;
                if (!eval { $message = qb::JSON::decode($body); 1 }) {
                    my $error = $@;
                    # A signal handler's die while decoding ends the call as itself.
                    die $error if ref $error ne 'qb::JSON::Malformed';
                    _fail_call(qb::Error->new('QbError', "the executor sent a malformed frame: $error"));
                }
                _fail_call(qb::Error->new('QbError', 'the executor sent a frame that is not an object'))
                    if ref $message ne 'HASH';
                return $message;
            }
        }
        my $got = sysread($bridge, $inbox, $wanted - length $inbox, length $inbox);
        if (!defined $got) {
            next if $! == EINTR;
            _no_answer("$!");
        }
        _no_answer(length $inbox ? 'bridge closed mid-frame' : 'eof') if $got == 0;
    }
}

# protocol.py's MAX_ARG_DEPTH: arguments whose array and hash references nest deeper
# are refused before they are sent (the executor would take the frame as broken).
sub MAX_ARG_DEPTH () { 32 }

# Whether the references in @_ nest beyond MAX_ARG_DEPTH; iterative, so an array that
# holds itself is found too.
sub _nests_too_deep {
    my @pending = map { [ $_, 1 ] } @_;
    while (my $item = pop @pending) {
        my ($value, $depth) = @$item;
        my $type = ref $value;
        next if $type ne 'ARRAY' && $type ne 'HASH';
        return 1 if $depth > MAX_ARG_DEPTH;
        push @pending, map { [ $_, $depth + 1 ] } $type eq 'ARRAY' ? @$value : values %$value;
    }
    return 0;
}

sub _call {
    my ($fn, $args, $kwargs) = @_;
    die qb::Error->new('QbError',
        "qb calls work only in the callback's own process, not in a process it forked")
        if $$ != $bound_pid;    # qb.py's _FORKED_CALL
    die qb::Error->new('QbError',
        "qb calls work only in the callback's own thread, not in a thread it started")
        if $INC{'threads.pm'} && threads->tid;
    die qb::Error->new('InvalidArgument', "qb::$fn: its arguments nest array or hash "
        . 'references more than ' . MAX_ARG_DEPTH . ' deep')
        if _nests_too_deep(@{ $args || [] }, values %{ $kwargs || {} });
    die qb::Error->new('QbError', "a qb call cannot be made while a qb call is under way "
        . "(a signal handler's)") if $_in_call;
    local $_in_call = 1;
    local $_calling = "qb::$fn";
    my $id = ++$next_call_id;
    _write_frame({
        type   => 'call',
        id     => $id,
        fn     => $fn,
        args   => [ @{ $args || [] } ],
        kwargs => { %{ $kwargs || {} } },
    });
    my $reply = _read_frame();
    $reply = _read_frame()    # the answer to a call abandoned before this one
        while ($reply->{type} // '') eq 'reply' && ($reply->{id} // $id) < $id;
    if (($reply->{type} // '') ne 'reply') {
        _fail_call(qb::Error->new('QbError',
            "unexpected answer to qb::$fn: " . ($reply->{type} // 'no type')));
    }
    if (($reply->{id} // -1) != $id) {    # qb.py's _ANOTHER_CALLS_ANSWER
        _fail_call(qb::Error->new('QbError', "qb::$fn got the answer to another call (id "
            . ($reply->{id} // 'none') . "; its own is $id): a call frame written to the "
            . "bridge other than through qb (by a process the callback forked, say) took "
            . "this call's answer"));
    }
    return $reply->{value} if $reply->{ok};
    my $error = $reply->{error} || {};
    _fail_call(qb::Error->new($error->{kind} || 'QbError', $error->{message} // "qb::$fn failed"));
}

# -- context, answered locally ----------------------------------------------------------

# The context functions take nothing, as in Python (an argument is a mistake to say).
sub _takes_nothing {
    my ($fn, @given) = @_;
    return unless @given;
    die qb::Error->new('InvalidArgument', "qb::$fn takes no arguments, as in qb::$fn(); "
        . 'it was given ' . scalar(@given) . (@given == 1 ? ' argument' : ' arguments'));
}

# Id of the job that owns the callback (also $qb::jobid).
sub jobid {
    _takes_nothing('jobid', @_);
    return defined $context{job}{id} ? 0 + $context{job}{id} : undef;
}

# The triggering instance (subjob) id, or -1 when a subjob event did not fire this.
sub subid {
    _takes_nothing('subid', @_);
    return defined $context{subjob_id} ? 0 + $context{subjob_id} : -1;
}

# Name of the triggering work item, or '' when a work event did not fire this.
sub workid {
    _takes_nothing('workid', @_);
    return defined $context{work_name} ? "$context{work_name}" : '';
}

# The triggering event {name, type, context, extra} as a hashref, or undef (context as
# qb.py's event says).
sub event {
    _takes_nothing('event', @_);
    my $event = $context{event};
    return ref $event eq 'HASH' ? { %$event } : undef;
}

# The running callback's record: id, pid, triggers, language, user, count (its firings,
# this run's included, in a fired run; an Execute's is the caller's, as given), maximum.
sub callback {
    _takes_nothing('callback', @_);
    return { %{ $context{callback} || {} } };
}

# -- supervisor calls -------------------------------------------------------------------

# Job hashes: jobinfo('-id', $n), jobinfo(-id => $n), jobinfo(-pgrp => $n),
# jobinfo(id => $n), jobinfo(pgrp => $n), jobinfo($n), jobinfo() for the own job.
# Add -callbacks (a flag, or -callbacks => $true) or callbacks => $true for each job's
# callbacks; fields => ['name', ...] keeps only those keys of each job, and its id
# ('callbacks' among them includes the callbacks); status => 'running' (or a list)
# keeps only jobs in that status; -agenda / -subjobs (flags, or => $true) are Qube's
# client's and always hold, => $false leaves that key out. A flag's value is taken by
# Perl's truth, dashed or not. A list in list context, an arrayref in scalar context.
sub jobinfo {
    my @args = @_;
    my (@positional, %kwargs);
    # Flags and hash style mix freely (-id => 12, fields => [...]). The selectors and
    # fields go as flags, not through a hash that would keep only the last of two: the
    # executor refuses a second one. Any other name (foo => 1) goes as a named argument,
    # which the executor refuses by name, as Python's jobinfo(foo=1); no job id starts
    # with a letter.
    while (@args) {
        my $arg = shift @args;
        if (@args && defined $arg && !ref $arg) {
            if ($arg =~ /\A-?(id|pgrp|fields|status)\z/) {
                push @positional, "-$1", shift @args;
                next;
            }
            # A dashed flag's value is what follows it, unless that is a flag or a name
            # itself ('-id', $n, '-agenda', '-subjobs'): -callbacks => 2 is true, as
            # callbacks => 2 is, not the flag and job 2.
            my ($flag) = $arg =~ /\A-(callbacks|agenda|subjobs)\z/;
            if ($flag && !_jobinfo_word($args[0])) {
                $kwargs{$flag} = shift @args;
                next;
            }
            if ($arg =~ /\A[A-Za-z_]\w*\z/) {
                $kwargs{$arg} = shift @args;
                next;
            }
        }
        push @positional, $arg;
    }
    # Perl's truth, not Python's: "0" is false.
    for my $flag (grep { exists $kwargs{$_} } qw(callbacks agenda subjobs)) {
        $kwargs{$flag} = $kwargs{$flag} ? 1 : 0;
    }
    my $jobs = _call('jobinfo', \@positional, \%kwargs);
    return wantarray ? @$jobs : $jobs;
}

# Whether a jobinfo argument is a flag (any -word) or one of its names, not a value.
sub _jobinfo_word {
    my ($arg) = @_;
    return defined $arg && !ref $arg
        && $arg =~ /\A(?:-[A-Za-z_]\w*|id|pgrp|fields|status|callbacks|agenda|subjobs)\z/;
}

# Status string of a job ('blocked', 'running', ...).
sub jobstatus { return _call('jobstatus', [@_]) }

# Status string of a work item "<jobid>:<workname>".
sub workstatus { return _call('workstatus', [@_]) }

# Status string of an instance "<jobid>.<subid>".
sub subjobstatus { return _call('subjobstatus', [@_]) }

# Verbs return how many jobs, items or instances changed. qb::kill lives here only:
# Perl's builtin kill in the callback's own package is untouched.
# Named subs (so stack traces say qb::unblock), compiled in one string eval: one
# compile instead of forty, and no Sub::Util.
{
    my @names = (@JOB_VERBS, (map {"work$_"} @WORK_VERBS), (map {"subjob$_"} @SUBJOB_VERBS));
    my $source = join '', map {"sub $_ { return 0 + _call('$_', [\@_]) }\n"} @names;
    eval "$source; 1" or die $@;    ## no critic (ProhibitStringyEval)
    no strict 'refs';    ## no critic (ProhibitNoStrict)
    # Qube spells the work verbs both ways: workunblock / unblockwork.
    *{"qb::${_}work"} = \&{"qb::work$_"} for @WORK_VERBS;
}


package qb::Error;

# A failed qb call: kind (the Python exception class name) and message.

use strict;

# Stringify as "kind: message": the symbols `use overload` would make (overload.pm's
# OVERLOAD), made here. Loading overload.pm costs 5 ms, and loading it with the first
# error let a signal handler's die interrupt its require: every later error printed as
# qb::Error=HASH(...).
{
    no strict 'refs';    ## no critic (ProhibitNoStrict)
    *{'qb::Error::(('} = \&_nil;
    *{'qb::Error::()'} = \&_nil;
    ${'qb::Error::()'} = 1;    # fallback => 1
    *{'qb::Error::(""'} = sub { "$_[0]{kind}: $_[0]{message}" };
    *{'qb::Error::(bool'} = sub { 1 };
}

sub _nil { return }

sub new {
    my ($class, $kind, $message) = @_;
    return bless { kind => $kind, message => $message }, $class;
}

sub kind    { return $_[0]{kind} }
sub message { return $_[0]{message} }
sub throw   { my $class = shift; die $class->new(@_) }


package qb::JSON;

# The JSON the bridge needs, in pure Perl: encode takes character strings and returns
# UTF-8 octets; decode takes UTF-8 octets and returns structures whose strings are
# octets. Scalars that hold a number (Perl's polymorphic `&` is numeric for them) and
# print as a JSON number, and strings written as integers (ids: a call's go as numbers,
# as the Python qb sends them), encode as numbers; every other scalar as the string it
# prints ("-0" and "02" too: the executor refuses "-0" as Python's qb does, where 0 + "-0"
# would be job 0). true/false decode to 1/0, null to undef. text() marks a string that must stay a JSON string
# whatever it looks like (the done frame's message of `die "42"` is text, not 42).

use strict;

my %ESCAPE = ('"' => '\\"', '\\' => '\\\\', "\n" => '\\n', "\r" => '\\r', "\t" => '\\t',
    "\f" => '\\f', "\b" => '\\b');
# An integer as JSON and Python write it (no "-0", no leading zero), of up to 15 digits:
# exact in a double.
our $INTEGER = qr/\A(?:0|-?[1-9][0-9]{0,14})\z/;
our $NUMBER = qr/\A-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?\z/;
my %UNESCAPE = ('"' => '"', '\\' => '\\', '/' => '/', b => "\b", f => "\f", n => "\n",
    r => "\r", t => "\t");

sub encode {
    my $json = _encode($_[0]);
    utf8::encode($json);
    return $json;
}

sub text {
    my $copy = "$_[0]";
    return bless \$copy, 'qb::JSON::Text';
}

sub _encode {
    my ($value) = @_;
    return 'null' if !defined $value;
    my $type = ref $value;
    if ($type eq 'HASH') {
        return '{' . join(',', map { _string($_) . ':' . _encode($value->{$_}) } sort keys %$value) . '}';
    }
    return '[' . join(',', map { _encode($_) } @$value) . ']' if $type eq 'ARRAY';
    return _string($type eq 'qb::JSON::Text' ? $$value : "$value") if $type;
    return $value if $value =~ $INTEGER;
    # A number, not a string (wide strings are strings, and & would die on them), whose
    # string form is a JSON number: a string once used as a number has numeric flags
    # too ("3:1" + 0), a dualvar a string of its own, Perl's false is "", and Inf and
    # NaN have no JSON number; each goes as the string Perl prints.
    return "$value" if $value =~ $NUMBER && $value ne '-0' && length do { $value & '' };
    return _string($value);
}

sub _string {
    my ($text) = @_;
    # A surrogate or a code point beyond Unicode has no UTF-8 the executor can read:
    # U+FFFD, as the executor does for a lone surrogate in Python's frames.
    $text =~ s/[^\x{0}-\x{D7FF}\x{E000}-\x{10FFFF}]/\x{FFFD}/g if utf8::is_utf8($text);
    $text =~ s/(["\\\x00-\x1f])/$ESCAPE{$1} \/\/ sprintf('\\u%04x', ord $1)/ge;
    return qq("$text");
}

sub decode {
    my $text = $_[0];
    pos($text) = 0;
    my $value = _value(\$text);
    $text =~ /\G[ \t\r\n]*/gc;
    _fail(\$text, 'the end') if pos($text) != length $text;
    return $value;
}

sub _value {
    my ($ref) = @_;
    $$ref =~ /\G[ \t\r\n]*/gc;
    if ($$ref =~ /\G\{/gc) {
        my %object;
        return \%object if $$ref =~ /\G[ \t\r\n]*\}/gc;
        while (1) {
            $$ref =~ /\G[ \t\r\n]*"/gc or _fail($ref, 'a string key');
            my $key = _string_body($ref);
            $$ref =~ /\G[ \t\r\n]*:/gc or _fail($ref, "':'");
            $object{$key} = _value($ref);
            next if $$ref =~ /\G[ \t\r\n]*,/gc;
            return \%object if $$ref =~ /\G[ \t\r\n]*\}/gc;
            _fail($ref, "',' or '}'");
        }
    }
    if ($$ref =~ /\G\[/gc) {
        my @array;
        return \@array if $$ref =~ /\G[ \t\r\n]*\]/gc;
        while (1) {
            push @array, _value($ref);
            next if $$ref =~ /\G[ \t\r\n]*,/gc;
            return \@array if $$ref =~ /\G[ \t\r\n]*\]/gc;
            _fail($ref, "',' or ']'");
        }
    }
    return _string_body($ref) if $$ref =~ /\G"/gc;
    return 0 + $1 if $$ref =~ /\G(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)/gc;
    return 1 if $$ref =~ /\Gtrue/gc;
    return 0 if $$ref =~ /\Gfalse/gc;
    return undef if $$ref =~ /\Gnull/gc;    ## no critic (ProhibitExplicitReturnUndef)
    _fail($ref, 'a JSON value');
}

sub _string_body {
    my ($ref) = @_;
    my $out = '';
    while (1) {
        if ($$ref =~ /\G([^"\\]+)/gc) { $out .= $1; next }
        return $out if $$ref =~ /\G"/gc;
        if ($$ref =~ /\G\\u([0-9a-fA-F]{4})/gc) {
            my $code = hex $1;
            if ($code >= 0xD800 && $code <= 0xDBFF && $$ref =~ /\G\\u([dD][c-fC-F][0-9a-fA-F]{2})/gc) {
                $code = 0x10000 + (($code - 0xD800) << 10) + (hex($1) - 0xDC00);
            }
            my $char = chr $code;
            utf8::encode($char);
            $out .= $char;
            next;
        }
        if ($$ref =~ m{\G\\(["\\/bfnrt])}gc) { $out .= $UNESCAPE{$1}; next }
        _fail($ref, 'the end of the string');
    }
}

# Input that is not JSON dies with a qb::JSON::Malformed, so that qb::_read_frame tells
# it from a signal handler's die while decoding; it stringifies to its text (overload's
# symbols, made as qb::Error makes them).
{
    no strict 'refs';    ## no critic (ProhibitNoStrict)
    *{'qb::JSON::Malformed::(('} = \&qb::Error::_nil;
    *{'qb::JSON::Malformed::()'} = \&qb::Error::_nil;
    ${'qb::JSON::Malformed::()'} = 1;    # fallback => 1
    *{'qb::JSON::Malformed::(""'} = sub { ${ $_[0] } };
    *{'qb::JSON::Malformed::(bool'} = sub { 1 };
}

sub _fail {
    my ($ref, $what) = @_;
    my $text = "expected $what at byte " . (pos($$ref) // 0) . "\n";
    die bless \$text, 'qb::JSON::Malformed';
}

1;
