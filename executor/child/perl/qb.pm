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
# Errors: a failed call dies with a qb::Error object (fields kind and message; it
# stringifies to "kind: message"), so `eval { qb::unblock($id) }; if ($@) {...}` works
# and `$@->{kind}` says which (PermissionDenied, NoSuchJob, NoSuchWork, InvalidArgument,
# SupervisorUnavailable, QbError).
#
# Core modules only (JSON::PP).

use strict;
use warnings;
use JSON::PP ();
use Sub::Util ();

our $VERSION = '1.0';
our $jobid;    # the job that owns the callback, set by bootstrap.pl

# Qube time is Unix time minus this (qube-callbacks.md §7).
our $QB_TIME_EPOCH_OFFSET = 946702800;

my $bridge;
my %context;
my $next_call_id = 0;
my $JSON = JSON::PP->new->utf8(1)->canonical(1)->allow_blessed(1)->convert_blessed(1)
    ->allow_unknown(1);

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
    %context = %{ $ctx || {} };
    $jobid = defined $context{job}{id} ? 0 + $context{job}{id} : undef;
    return;
}

sub _set_bridge { $bridge = $_[0]; return }

# Incoming text becomes UTF-8 octets: the callback sees bytes, as from a file.
sub _to_bytes {
    my ($value) = @_;
    my $type = ref $value;
    if ($type eq 'HASH') {
        my %copy;
        for my $key (keys %$value) {
            my $k = $key;
            utf8::encode($k) if utf8::is_utf8($k);
            $copy{$k} = _to_bytes($value->{$key});
        }
        return \%copy;
    }
    return [ map { _to_bytes($_) } @$value ] if $type eq 'ARRAY';
    if (!$type && defined $value && utf8::is_utf8($value)) {
        my $copy = $value;
        utf8::encode($copy);
        return $copy;
    }
    return $value;
}

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
    return $value;
}

sub _to_text_scalar {
    my ($value) = @_;
    return $value if !defined $value || utf8::is_utf8($value) || $value !~ /[\x80-\xff]/;
    my $copy = $value;
    utf8::decode($copy);    # leaves invalid UTF-8 alone: Latin-1 characters
    return $copy;
}

sub _write_frame {
    my ($message) = @_;
    my $body = $JSON->encode(_to_text($message));
    my $data = pack('N', length $body) . $body;
    while (length $data) {
        my $written = syswrite($bridge, $data);
        if (!defined $written) {
            next if $!{EINTR};
            die qb::Error->new('QbError', "the executor closed the bridge: $!");
        }
        substr($data, 0, $written, '');
    }
    return;
}

sub _read_exactly {
    my ($size) = @_;
    my $data = '';
    while (length $data < $size) {
        my $got = sysread($bridge, $data, $size - length $data, length $data);
        if (!defined $got) {
            next if $!{EINTR};
            die qb::Error->new('QbError', "reading from the executor failed: $!");
        }
        die qb::Error->new('QbError', 'the executor closed the bridge') if $got == 0;
    }
    return $data;
}

sub _read_frame {
    my $size = unpack('N', _read_exactly(4));
    my $message = $JSON->decode(_read_exactly($size));
    die qb::Error->new('QbError', 'the executor sent a frame that is not an object')
        if ref $message ne 'HASH';
    return _to_bytes($message);
}

# Ids that look like integers go as JSON numbers, as the Python qb sends them.
sub _wire_arg {
    my ($value) = @_;
    return [ map { _wire_arg($_) } @$value ] if ref $value eq 'ARRAY';
    return 0 + $value
        if defined $value && !ref $value && $value =~ /\A-?[0-9]{1,15}\z/;
    return $value;
}

sub _call {
    my ($fn, $args, $kwargs) = @_;
    my $id = ++$next_call_id;
    _write_frame({
        type   => 'call',
        id     => $id,
        fn     => $fn,
        args   => [ map { _wire_arg($_) } @{ $args || [] } ],
        kwargs => { %{ $kwargs || {} } },
    });
    my $reply = _read_frame();
    if (($reply->{type} // '') ne 'reply' || ($reply->{id} // -1) != $id) {
        die qb::Error->new('QbError',
            "unexpected answer to qb::$fn: " . ($reply->{type} // 'no type'));
    }
    return $reply->{value} if $reply->{ok};
    my $error = $reply->{error} || {};
    die qb::Error->new($error->{kind} || 'QbError', $error->{message} // "qb::$fn failed");
}

# -- context, answered locally ----------------------------------------------------------

# Id of the job that owns the callback (also $qb::jobid).
sub jobid { return defined $context{job}{id} ? 0 + $context{job}{id} : undef }

# The triggering instance (subjob) id, or -1 when a subjob event did not fire this.
sub subid { return defined $context{subjob_id} ? 0 + $context{subjob_id} : -1 }

# Name of the triggering work item, or '' when a work event did not fire this.
sub workid { return defined $context{work_name} ? "$context{work_name}" : '' }

# The triggering event {name, type, context, extra} as a hashref, or undef.
sub event {
    my $event = $context{event};
    return ref $event eq 'HASH' ? { %$event } : undef;
}

# The running callback's record: id, triggers, language, user, count, maximum.
sub callback { return { %{ $context{callback} || {} } } }

# -- supervisor calls -------------------------------------------------------------------

# Job hashes: jobinfo('-id', $n), jobinfo(-id => $n), jobinfo(-pgrp => $n),
# jobinfo(id => $n), jobinfo(pgrp => $n), jobinfo($n), jobinfo() for the own job.
# Add -callbacks (a flag, or -callbacks => 1) or callbacks => 1 for each job's
# callbacks. A list in list context, an arrayref in scalar context.
sub jobinfo {
    my @args = @_;
    my %kwargs;
    if (@args && @args % 2 == 0 && defined $args[0] && !ref $args[0]
        && $args[0] =~ /\A(?:id|pgrp|callbacks|fields)\z/)
    {
        %kwargs = @args;    # hash style: id => 12
        @args   = ();
    }
    my @positional;
    while (@args) {
        my $arg = shift @args;
        if (defined $arg && !ref $arg && $arg eq '-callbacks'
            && @args && defined $args[0] && $args[0] =~ /\A[01]\z/)
        {
            $kwargs{callbacks} = shift @args;
            next;
        }
        push @positional, $arg;
    }
    if (exists $kwargs{callbacks}) {
        $kwargs{callbacks} = $kwargs{callbacks} ? JSON::PP::true : JSON::PP::false;
    }
    for my $key (qw(id pgrp)) {
        $kwargs{$key} = _wire_arg($kwargs{$key}) if exists $kwargs{$key};
    }
    my $jobs = _call('jobinfo', \@positional, \%kwargs);
    return wantarray ? @$jobs : $jobs;
}

# Status string of a job ('blocked', 'running', ...).
sub jobstatus { return _call('jobstatus', [@_]) }

# Status string of a work item "<jobid>:<workname>".
sub workstatus { return _call('workstatus', [@_]) }

# Status string of an instance "<jobid>.<subid>".
sub subjobstatus { return _call('subjobstatus', [@_]) }

# Verbs return how many jobs, items or instances changed. qb::kill lives here only:
# Perl's builtin kill in the callback's own package is untouched.
{
    no strict 'refs';    ## no critic (ProhibitNoStrict)
    for my $verb (@JOB_VERBS) {
        *{"qb::$verb"} = Sub::Util::set_subname("qb::$verb", sub { return 0 + _call($verb, [@_]) });
    }
    for my $verb (@WORK_VERBS) {
        my $fn = "work$verb";
        my $sub = Sub::Util::set_subname("qb::$fn", sub { return 0 + _call($fn, [@_]) });
        *{"qb::work$verb"} = $sub;    # Qube spells these both ways: workunblock / unblockwork
        *{"qb::${verb}work"} = $sub;
    }
    for my $verb (@SUBJOB_VERBS) {
        my $fn = "subjob$verb";
        # "<jobid>.<subid>", or "<jobid>" for all instances
        *{"qb::$fn"} = Sub::Util::set_subname("qb::$fn", sub { return 0 + _call($fn, [@_]) });
    }
}


package qb::Error;

# A failed qb call: kind (the Python exception class name) and message.

use strict;
use warnings;
use overload
    '""'     => sub { "$_[0]{kind}: $_[0]{message}" },
    'bool'   => sub { 1 },
    fallback => 1;

sub new {
    my ($class, $kind, $message) = @_;
    return bless { kind => $kind, message => $message }, $class;
}

sub kind    { return $_[0]{kind} }
sub message { return $_[0]{message} }
sub throw   { my $class = shift; die $class->new(@_) }

1;
