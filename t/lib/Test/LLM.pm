package Test::LLM;

# Test harness for ngx_http_llm_module: a temp prefix per test file, nginx
# configs from heredocs with free ports, nginx start/stop/reload, helper
# daemons (a mock LLM provider, redis-server), raw-socket HTTP clients,
# and log checks that run at the end of every test file.
#
# Core Perl only.  Tests run from the repository root:
#
#     use lib 't/lib';
#     use Test::More;
#     use Test::LLM;
#
#     my $t = Test::LLM->new;
#     $t->write_file_expand('nginx.conf', <<'EOF');
#     ...  listen 127.0.0.1:%%PORT_8080%%; ...
#     EOF
#     $t->run;
#     my $r = parse_response(http_get('/', port => $t->port(8080)));
#     ...
#     done_testing;
#
# When the file's tests are done (done_testing, or the end of the script),
# the harness stops nginx and its daemons and adds two tests per harness
# object: no alert, emerg, crash or sanitizer report in any log under the
# prefix, and no registered canary secret in any log.  A file with a fixed
# plan uses $t->plan(N) so these two are counted.
#
# Methods:
#     new(log_level => 'info'), testdir, plan(N), canary(@secrets),
#     allow_alerts(@re), load_module('echo' | path), log_level([level]),
#     has_daemon(name)
#     port(N), expand(text), write_file(name, text),
#     write_file_expand(name, text), read_file(name), log_offset(name),
#     read_from(name, offset), wait_for_lines(name, n, timeout),
#     wait_for_log(name, re, timeout)
#     run, stop, reload (true when new workers replaced the old ones),
#     test_config (list: exit ok, output), conf_line(re, n),
#     config_fails(name, message, line), config_passes(name),
#     nginx_pid, worker_pids,
#     worker_hwm_kb (dies when /proc cannot tell)
#     run_daemon(code | program, @args), stop_daemons,
#     waitforsocket(host:port, timeout), run_redis (port; %%REDIS%% in
#     expanded text is the last one started), status_json(port => P,
#     uri => U), wait_redis(cluster => 1, timeout => S),
#     run_mock_provider(port => P, handler => sub, name => N),
#     mock_requests(name), mock_count(name), check_logs
#     Test::LLM::scan_logs(files => [...], canaries => [...], allow => [...])
#     Test::LLM::run_fleet(NAME => value, ...) (bench/fleet)
#
# Functions (exported):
#     http(raw, port => P, timeout => S), http_get(uri, %o),
#     http_post(uri, body, port => P, headers => {..}, chunked => size),
#     http_request(method, uri, body => .., headers => .., keepalive => 1),
#     http_keepalive([raw, ...], port => P) -> ([responses], open),
#     parse_response(raw) -> { status, headers, header_list, body,
#     chunked, complete }, dechunk(data) -> (body, complete),
#     http_start(raw, port => P) -> socket, http_send(socket, data),
#     read_response(socket, timeout), read_until(socket, re, timeout),
#     read_some(socket, timeout), read_all(socket, timeout),
#     conn_closed(socket, timeout), sse_events(body),
#     redis_command(port, @args), fake_nodes(redis port, @ids),
#     wait_until(sub, timeout), the fleet's counts in Redis:
#     fleet_count(port, route, r|x, sec), fleet_sum(port, route, r|x),
#     fleet_seconds(port), fleet_add(port, route, r|x, sec, n),
#     fleet_index(port, route)
#
# Environment:
#     TEST_LLM_NGINX      nginx binary (default /usr/sbin/nginx)
#     TEST_LLM_MODULE     module .so (default <repo>/build/...)
#     TEST_LLM_LOG_LEVEL  error_log level (default info)
#     TEST_LLM_LEAVE      keep the temp prefix
#     TEST_LLM_CATLOG     print error.log at the end

use strict;
use warnings;

use base qw(Exporter);

our @EXPORT = qw(
    http http_get http_post http_request http_keepalive parse_response
    http_start http_send read_response read_until read_some read_all
    conn_closed dechunk sse_events redis_command fake_nodes wait_until
    fleet_index fleet_count fleet_seconds fleet_sum fleet_add
);

use Cwd qw(abs_path);
use Digest::MD5 qw(md5_hex);
use Errno qw(EINTR EAGAIN EWOULDBLOCK);
use File::Basename qw(dirname);
use File::Find qw(find);
use File::Path qw(make_path rmtree);
use File::Spec;
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use JSON::PP ();
use POSIX qw(WNOHANG);
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);

use Test::More ();
use Test2::API qw(test2_stack);

use Test::LLM::Mock;


our $NGINX = $ENV{TEST_LLM_NGINX} || '/usr/sbin/nginx';

our $REPO = abs_path(dirname(__FILE__) . '/../../..');

our $MODULE = $ENV{TEST_LLM_MODULE}
    || "$REPO/build/ngx_http_llm_module.so";

our $ECHO_MODULE = '/usr/lib/nginx/modules/ngx_http_echo_module.so';

# log lines that fail a test file unless allowed by $t->allow_alerts()
our @PROBLEMS = (
    qr/\[alert\]/,
    qr/\[emerg\]/,
    qr/exited on signal/,
    qr/AddressSanitizer/,
    qr/LeakSanitizer/,
    qr/ThreadSanitizer/,
    qr/runtime error:/,
);

# tests each harness object adds at the end
use constant END_CHECKS => 2;

my @OBJECTS;
my $FOLLOW_UP;

# Ports: every port is reserved with a UDP socket bound to the same number
# for the life of the test process, so parallel test files (prove -j)
# never pick the same one.  Picked below the kernel's ephemeral range, so
# outgoing connections do not take them either.

my %PORT_LOCK;


###############################################################################
# object

sub new {
    my ($class, %opts) = @_;

    Test::More::BAIL_OUT("no nginx binary $NGINX") unless -x $NGINX;
    Test::More::BAIL_OUT("module not built: $MODULE (run make)")
        unless -f $MODULE;

    my $dir = tempdir('llm-test-XXXXXXXX', DIR => File::Spec->tmpdir);

    # workers run as nobody when the tests run as root: they must reach
    # the temp paths under the prefix
    chmod 0755, $dir;

    my $self = bless {
        pid       => $$,
        dir       => $dir,
        ports     => {},
        daemons   => [],
        canaries  => [],
        allow     => [],
        modules   => [],
        log_level => $opts{log_level} || $ENV{TEST_LLM_LOG_LEVEL} || 'info',
        conf      => 'nginx.conf',
        checked   => 0,
    }, $class;

    make_path("$dir/logs", "$dir/temp", "$dir/mock", { mode => 0755 });

    push @OBJECTS, $self;
    _install_follow_up();

    # interrupted (^C, kill): END blocks and DESTROY still clean up
    for my $sig (qw(INT TERM HUP)) {
        $SIG{$sig} = sub { exit 130 }
            if !defined $SIG{$sig} || $SIG{$sig} eq 'DEFAULT'
               || $SIG{$sig} eq '';
    }

    return $self;
}

sub testdir { $_[0]->{dir} }
sub prefix  { $_[0]->{dir} }

sub module_path { $MODULE }

sub plan {
    my ($self, $n) = @_;
    Test::More::plan(tests => $n + END_CHECKS * @OBJECTS);
    return $self;
}

# extra modules to load_module in nginx.conf (before write_file_expand).
# A module that is not installed skips the file's tests when none has run
# yet: `make test` installs the packages (tools/deps.sh test), a prove run
# by hand may lack them.
sub load_module {
    my ($self, $path) = @_;
    my $pkg = 'the package that has it';

    if ($path eq 'echo') {
        $path = $ECHO_MODULE;
        $pkg = 'libnginx-mod-http-echo';
    }

    unless (-f $path) {
        my $why = "$path not found (install $pkg)";
        Test::More::plan(skip_all => $why)
            unless Test::More->builder->current_test;
        die "load_module: $why\n";
    }

    push @{$self->{modules}}, $path;
    return $self;
}

sub has_daemon {
    my ($self, $name) = @_;
    for my $d (split /:/, $ENV{PATH} || '') {
        return $self if -x "$d/$name";
    }
    Test::More::plan(skip_all => "$name not found");
}

# error_log level of nginx.conf (before write_file_expand); without an
# argument, the level in use
sub log_level {
    my ($self, $level) = @_;
    return $self->{log_level} unless defined $level;
    $self->{log_level} = $level;
    return $self;
}

sub canary {
    my ($self, @secrets) = @_;
    push @{$self->{canaries}}, @secrets;
    return $self;
}

sub allow_alerts {
    my ($self, @re) = @_;
    push @{$self->{allow}}, @re;
    return $self;
}


###############################################################################
# ports

sub port {
    my ($self, $num) = @_;

    return $self->{ports}{$num} if defined $self->{ports}{$num};

    my ($low, $high) = (10000, 30000);

    if (open my $fh, '<', '/proc/sys/net/ipv4/ip_local_port_range') {
        my ($elow, $ehigh) = split ' ', scalar <$fh>;
        if ($elow && $elow > 12000) {
            $high = $elow - 1;
        } elsif ($ehigh && $ehigh < 60000) {
            ($low, $high) = ($ehigh + 1, 65000);
        }
    }

    for (1 .. 200) {
        my $port = $low + int(rand($high - $low));
        next if $PORT_LOCK{$port};

        my $lock = IO::Socket::INET->new(
            Proto => 'udp', LocalAddr => "127.0.0.1:$port") or next;
        my $probe = IO::Socket::INET->new(
            Proto => 'tcp', LocalAddr => "127.0.0.1:$port",
            Listen => 1, ReuseAddr => 1) or next;
        close $probe;

        $PORT_LOCK{$port} = $lock;
        return $self->{ports}{$num} = $port;
    }

    die "no free port found\n";
}


###############################################################################
# files

sub _path {
    my ($self, $name) = @_;
    return $name if File::Spec->file_name_is_absolute($name);
    return "$self->{dir}/$name";
}

sub read_file {
    my ($self, $name) = @_;
    open my $fh, '<', $self->_path($name) or return '';
    binmode $fh;
    local $/;
    my $content = <$fh>;
    return defined $content ? $content : '';
}

sub write_file {
    my ($self, $name, $content) = @_;
    my $path = $self->_path($name);
    make_path(dirname($path));
    open my $fh, '>', $path or die "can't write $path: $!\n";
    binmode $fh;
    print $fh $content;
    close $fh or die "can't write $path: $!\n";
    return $self;
}

sub expand {
    my ($self, $content) = @_;
    $content =~ s/%%PORT_(\d+)%%/$self->port($1)/ge;
    $content =~ s/%%TESTDIR%%/$self->{dir}/g;
    $content =~ s/%%REDIS%%/$self->{redis_port}/g
        if defined $self->{redis_port};
    return $content;
}

sub write_file_expand {
    my ($self, $name, $content) = @_;

    $content = $self->expand($content);
    $content = $self->_globals($content) if $name eq $self->{conf};

    return $self->write_file($name, $content);
}

# size of a file now, to read what gets appended later with read_from()
sub log_offset {
    my ($self, $name) = @_;
    return -s $self->_path($name) || 0;
}

sub read_from {
    my ($self, $name, $offset) = @_;
    my $content = $self->read_file($name);
    return length $content > $offset ? substr($content, $offset) : '';
}

# wait until a file has at least $n lines (nginx writes the access log
# line after the response has been sent); returns the lines
sub wait_for_lines {
    my ($self, $name, $n, $timeout) = @_;
    my $deadline = time + ($timeout || 5);
    my @lines;
    while (1) {
        @lines = split /\n/, $self->read_file($name);
        last if @lines >= $n || time > $deadline;
        sleep 0.02;
    }
    return @lines;
}

# wait until a file has a line matching $re; returns it or undef
sub wait_for_log {
    my ($self, $name, $re, $timeout) = @_;
    my $deadline = time + ($timeout || 5);
    while (1) {
        for my $line (split /\n/, $self->read_file($name)) {
            return $line if $line =~ $re;
        }
        return undef if time > $deadline;
        sleep 0.02;
    }
}


###############################################################################
# nginx config globals

# A small nginx config tokenizer: directives with their arguments and the
# enclosing block names.  Enough to find what a test config sets itself.

sub _conf_directives {
    my ($text) = @_;
    my (@out, @stack, @words);

    my $word = qr/(?:\$\{[^}]*\}|[^\s;{}"'])(?:\$\{[^}]*\}|[^\s;{}])*/;

    pos($text) = 0;

    while (pos($text) < length $text) {
        if ($text =~ /\G\s+/gc || $text =~ /\G#[^\n]*/gc) {
            next;

        } elsif ($text =~ /\G;/gc) {
            push @out, { name => $words[0], args => [ @words[1 .. $#words] ],
                         ctx => [ @stack ], end => pos($text) } if @words;
            @words = ();

        } elsif ($text =~ /\G\{/gc) {
            my $name = @words ? $words[0] : '';
            push @out, { name => $name, args => [ @words[1 .. $#words] ],
                         ctx => [ @stack ], block => 1,
                         open => pos($text) };
            push @stack, $name;
            @words = ();

        } elsif ($text =~ /\G\}/gc) {
            pop @stack;
            @words = ();

        } elsif ($text =~ /\G"((?:[^"\\]|\\.)*)"/gcs
                 || $text =~ /\G'((?:[^'\\]|\\.)*)'/gcs
                 || $text =~ /\G($word)/gc)
        {
            push @words, $1;

        } else {
            $text =~ /\G./gcs;
        }
    }

    return @out;
}

sub _globals {
    my ($self, $content) = @_;
    my $dir = $self->{dir};

    my @d = _conf_directives($content);
    my %main = map { $_->{name} => 1 } grep { !@{$_->{ctx}} } @d;
    my ($http) = grep { $_->{block} && $_->{name} eq 'http'
                        && !@{$_->{ctx}} } @d;
    my %http = map { $_->{name} => 1 }
               grep { @{$_->{ctx}} == 1 && $_->{ctx}[0] eq 'http' } @d;

    # temp paths and the access log default to Debian's /var paths
    if ($http) {
        my $in = '';
        for my $tp (qw(client_body proxy fastcgi uwsgi scgi)) {
            $in .= "    ${tp}_temp_path $dir/temp/$tp;\n"
                unless $http{"${tp}_temp_path"};
        }
        $in .= "    access_log $dir/logs/access.log;\n"
            unless $http{access_log};
        substr($content, $http->{open}, 0) = "\n$in" if $in;
    }

    my $head = '';

    unless (grep { $_->{name} eq 'load_module'
                   && $_->{args}[0] =~ /ngx_http_llm_module/ } @d)
    {
        $head .= "load_module $MODULE;\n";
    }

    $head .= "load_module $_;\n" for @{$self->{modules}};
    $head .= "daemon off;\n" unless $main{daemon};
    $head .= "pid $dir/logs/nginx.pid;\n" unless $main{pid};
    $head .= "error_log $dir/logs/error.log $self->{log_level};\n"
        unless $main{error_log};

    return $head . $content;
}

# TCP addresses the config listens on, as host:port
sub _listens {
    my ($self) = @_;
    my @peers;

    for my $d (_conf_directives($self->read_file($self->{conf}))) {
        next unless $d->{name} eq 'listen';
        my $a = $d->{args}[0];
        next if !defined $a || $a =~ /^unix:/;
        next if grep { $_ eq 'udp' || $_ eq 'quic' } @{$d->{args}};

        if ($a =~ /^\d+$/) {
            push @peers, "127.0.0.1:$a";
        } elsif ($a =~ /^(?:\*|0\.0\.0\.0):(\d+)$/) {
            push @peers, "127.0.0.1:$1";
        } elsif ($a =~ /^\[(.*)\]:(\d+)$/) {
            push @peers, "[$1]:$2";
        } elsif ($a =~ /^(.+):(\d+)$/) {
            push @peers, "$1:$2";
        }
    }

    return @peers;
}


###############################################################################
# processes

# best effort: a child dies with the test process (prctl PR_SET_PDEATHSIG)
sub _die_with_parent {
    eval {
        require 'syscall.ph';
        syscall(&SYS_prctl(), 1, 15);
    };
}

# pid => ppid of every process
sub _ppids {
    my %ppid;
    opendir my $dh, '/proc' or return ();
    for my $pid (grep { /^\d+$/ } readdir $dh) {
        open my $fh, '<', "/proc/$pid/stat" or next;
        my $stat = <$fh>;
        next unless defined $stat && $stat =~ /\)\s+\S+\s+(\d+)/;
        $ppid{$pid} = $1;
    }
    return %ppid;
}

sub _descendants {
    my (@roots) = @_;
    my %ppid = _ppids();
    my %kids;
    push @{$kids{$ppid{$_}}}, $_ for keys %ppid;
    my (@out, @queue);
    @queue = @roots;
    while (@queue) {
        my $p = shift @queue;
        for my $k (@{$kids{$p} || []}) {
            push @out, $k;
            push @queue, $k;
        }
    }
    return @out;
}

sub _alive {
    my ($pid) = @_;
    return 0 unless $pid;
    # a zombie of ours counts as gone
    if (open my $fh, '<', "/proc/$pid/stat") {
        my $stat = <$fh>;
        return 0 if defined $stat && $stat =~ /\)\s+Z/;
        return 1;
    }
    return 0;
}

# wait for a pid to exit (reaping it if it is our child), bounded
sub _wait_exit {
    my ($pid, $timeout) = @_;
    my $deadline = time + $timeout;
    while (time < $deadline) {
        my $r = waitpid($pid, WNOHANG);
        return 1 if $r == $pid || ($r == -1 && !_alive($pid));
        return 1 if !_alive($pid);
        sleep 0.02;
    }
    return 0;
}

sub _kill_tree {
    my ($pid, $signal, $timeout) = @_;
    my @tree = ($pid, _descendants($pid));

    kill $signal, $pid;
    _wait_exit($pid, $timeout);

    for my $p (@tree) {
        next unless _alive($p);
        kill 'KILL', $p;
    }
    for my $p (@tree) {
        _wait_exit($p, 2);
    }
}

# run a command, output (stdout and stderr) captured, bounded in time;
# returns (exit status, output)
sub _capture {
    my ($timeout, @cmd) = @_;

    pipe(my $r, my $w) or die "pipe: $!\n";
    my $pid = fork;
    die "fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        close $r;
        open STDOUT, '>&', $w;
        open STDERR, '>&', $w;
        open STDIN, '<', '/dev/null';
        exec @cmd or POSIX::_exit(127);
    }

    close $w;
    my $out = '';
    my $sel = IO::Select->new($r);
    my $deadline = time + $timeout;

    while (time < $deadline) {
        next unless $sel->can_read($deadline - time);
        my $n = sysread($r, $out, 65536, length $out);
        last unless $n;
    }

    close $r;

    my $status;
    $deadline = time + 5;
    while (1) {
        if (waitpid($pid, WNOHANG) == $pid) {
            $status = $?;
            last;
        }
        if (time > $deadline) {
            _kill_tree($pid, 'KILL', 0);
            waitpid($pid, 0);
            $status = -1;
            last;
        }
        sleep 0.01;
    }

    return ($status, $out);
}


###############################################################################
# nginx

sub _nginx_args {
    my ($self) = @_;
    return ('-p', "$self->{dir}/", '-c', $self->{conf},
            '-e', "$self->{dir}/logs/error.log");
}

# nginx -t; returns (ok, output)
sub test_config {
    my ($self) = @_;
    my ($status, $out) = _capture(30, $NGINX, $self->_nginx_args, '-t');
    return wantarray ? ($status == 0, $out) : $status == 0;
}

# the line number in the written nginx.conf of the n-th line (first by
# default) matching re; 0 when none does
sub conf_line {
    my ($self, $re, $n) = @_;
    $n ||= 1;
    my @lines = split /\n/, $self->read_file($self->{conf});
    for my $i (0 .. $#lines) {
        return $i + 1 if $lines[$i] =~ $re && !--$n;
    }
    return 0;
}

# nginx -t fails with "[emerg] message", "in FILE:line" after it when a
# line is given: two tests
sub config_fails {
    my ($self, $name, $message, $line) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    my ($ok, $out) = $self->test_config;

    Test::More::ok(!$ok, "$name: nginx -t fails");

    my $where = defined $line ? " in $self->{dir}/$self->{conf}:$line" : '';
    Test::More::like($out, qr/^nginx: \[emerg\] \Q$message$where\E$/m,
                     "$name: message") or Test::More::diag($out);
}

# nginx -t passes without an emerg, warn or alert line: two tests
sub config_passes {
    my ($self, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    my ($ok, $out) = $self->test_config;

    Test::More::ok($ok, "$name: nginx -t passes") or Test::More::diag($out);
    Test::More::unlike($out, qr/\[(?:emerg|warn|alert)\]/,
                       "$name: no complaints");
}

sub run {
    my ($self, %opts) = @_;
    my $dir = $self->{dir};

    die "nginx is already running\n" if $self->{nginx};

    my @d = _conf_directives($self->read_file($self->{conf}));
    my ($daemon) = grep { $_->{name} eq 'daemon' && !@{$_->{ctx}} } @d;
    my $daemonized = $daemon && $daemon->{args}[0] eq 'on';
    my ($pidd) = grep { $_->{name} eq 'pid' && !@{$_->{ctx}} } @d;
    my $pidfile = $pidd ? $pidd->{args}[0] : "$dir/logs/nginx.pid";
    $pidfile = "$dir/$pidfile"
        unless File::Spec->file_name_is_absolute($pidfile);
    unlink $pidfile;

    my $pid = fork;
    die "fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        _die_with_parent() unless $daemonized;
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$dir/logs/nginx.stderr.log";
        open STDERR, '>&', \*STDOUT;
        exec $NGINX, $self->_nginx_args or POSIX::_exit(127);
    }

    my $deadline = time + ($opts{timeout} || 10);
    my $master = $pid;

    if ($daemonized) {
        _wait_exit($pid, 10);
        $master = undef;
        while (time < $deadline) {
            my $p = $self->read_file($pidfile);
            if ($p =~ /^(\d+)/) { $master = $1; last }
            sleep 0.05;
        }
    }

    my $started = sub {
        return 0 unless $master && _alive($master);
        for my $peer ($self->_listens) {
            my $s = IO::Socket::INET->new(PeerAddr => $peer, Timeout => 1)
                or return 0;
        }
        return 1;
    };

    until ($started->()) {
        if (!$master || !_alive($master) || time > $deadline) {
            waitpid($pid, WNOHANG);
            $self->{nginx} = $master;
            $self->stop;
            my $log = $self->read_file('logs/error.log')
                . $self->read_file('logs/nginx.stderr.log');
            my @tail = (split /\n/, $log)[-10 .. -1];
            die "nginx failed to start:\n"
                . join("\n", grep { defined } @tail) . "\n";
        }
        sleep 0.02;
    }

    $self->{nginx} = $master;
    $self->{nginx_child} = $daemonized ? 0 : 1;

    return $self;
}

sub nginx_pid { $_[0]->{nginx} }

# the peak resident memory (VmHWM, kB) of the first worker.  Dies when
# /proc does not tell, so a memory test fails instead of passing on
# 0 - 0 (a container without /proc, a kernel that hides it).
sub worker_hwm_kb {
    my ($self) = @_;

    # just after run the master may not have forked its workers yet
    my ($pid) = $self->worker_pids;
    my $deadline = time + 5;
    while (!$pid && $self->{nginx} && time < $deadline) {
        sleep 0.05;
        ($pid) = $self->worker_pids;
    }
    die "worker_hwm_kb: no nginx worker found under /proc\n" unless $pid;

    open my $fh, '<', "/proc/$pid/status"
        or die "worker_hwm_kb: cannot read /proc/$pid/status: $!\n";
    local $/;
    my ($kb) = <$fh> =~ /^VmHWM:\s+(\d+)\s+kB/m;
    die "worker_hwm_kb: no VmHWM in /proc/$pid/status\n" unless $kb;
    return $kb;
}

sub worker_pids {
    my ($self) = @_;
    return () unless $self->{nginx};
    my %ppid = _ppids();
    return sort { $a <=> $b }
           grep { $ppid{$_} == $self->{nginx} } keys %ppid;
}

# graceful stop: QUIT, bounded, then KILL of master and workers
sub stop {
    my ($self, %opts) = @_;
    my $master = $self->{nginx} or return $self;

    # forgotten only once gone: a stop interrupted by a signal is
    # completed by the cleanup in END
    _kill_tree($master, 'QUIT', $opts{timeout} || 10);
    delete $self->{nginx};

    return $self;
}

# HUP, then wait until the old workers are gone and new ones run;
# returns true when that happened in time
sub reload {
    my ($self, %opts) = @_;
    my $master = $self->{nginx} or die "nginx is not running\n";
    my %old = map { $_ => 1 } $self->worker_pids;

    kill 'HUP', $master;

    my $deadline = time + ($opts{timeout} || 10);

    while (time < $deadline) {
        my @now = $self->worker_pids;
        my @new = grep { !$old{$_} } @now;
        my @left = grep { _alive($_) } keys %old;
        return 1 if @new && !@left;
        sleep 0.05;
    }

    return 0;
}


###############################################################################
# daemons

sub run_daemon {
    my ($self, $code, @args) = @_;

    my $pid = fork;
    die "fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        _die_with_parent();
        $SIG{$_} = 'DEFAULT' for qw(TERM INT HUP CHLD);
        if (ref $code eq 'CODE') {
            eval { $code->(@args); 1 } or print STDERR "# daemon: $@";
            POSIX::_exit(0);
        }
        exec $code, @args or POSIX::_exit(127);
    }

    push @{$self->{daemons}}, $pid;
    return $pid;
}

sub stop_daemons {
    my ($self) = @_;
    while (my $pid = $self->{daemons}[-1]) {
        _kill_tree($pid, 'TERM', 5);
        pop @{$self->{daemons}};
    }
    return $self;
}

sub waitforsocket {
    my ($self, $peer, $timeout) = @_;
    my $deadline = time + ($timeout || 5);
    while (1) {
        my $s = IO::Socket::INET->new(PeerAddr => $peer, Timeout => 1);
        return 1 if $s;
        return 0 if time > $deadline;
        sleep 0.02;
    }
}

# redis-server on a free port, no persistence; returns the port
sub run_redis {
    my ($self, %opts) = @_;

    my $n = ++$self->{redis_n};
    my $port = $opts{port} || $self->port("redis$n");
    my $dir = "$self->{dir}/redis$n";
    make_path($dir);

    $self->run_daemon('redis-server', '--port', $port,
        '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
        '--dir', $dir, '--logfile', "$dir/redis.log",
        '--daemonize', 'no', @{$opts{args} || []});

    my $deadline = time + 10;
    while (time < $deadline) {
        my $r = eval { redis_command($port, 'PING') };
        return $self->{redis_port} = $port if defined $r && $r eq 'PONG';
        sleep 0.05;
    }

    die "redis-server did not start on port $port\n";
}

# the llm_status page (uri => '/status') of the server on port => P (this
# object's 8080), decoded; {} when it did not answer JSON
sub status_json {
    my ($self, %o) = @_;
    my $r = parse_response(http_get($o{uri} || '/status',
                                    port => $o{port} || $self->port(8080),
                                    timeout => $o{timeout} // 10));
    return eval { JSON::PP::decode_json($r->{body}) } || {};
}

# until the status page shows the link to Redis up (and, with cluster =>
# 1, the budgets counted across the fleet); true when it did in time
sub wait_redis {
    my ($self, %o) = @_;
    return wait_until(sub {
        my $r = $self->status_json(%o)->{redis} || {};
        return ($r->{state} // '') eq 'up'
               && (!$o{cluster} || ($r->{budget_source} // '') eq 'cluster');
    }, $o{timeout} || 5);
}

# bench/fleet (N nginx nodes, one Redis) run with the variables of %env
# and the module and nginx under test; its JSON lines kept (KEEP=1).
# Returns { status, out, runs => [ the JSON lines decoded ], dir (the
# run's prefix), logs => [ its error.log files ] }.  A file without
# redis-server is skipped.
sub run_fleet {
    my (%env) = @_;

    Test::More::plan(skip_all => 'no redis-server')
        unless grep { -x "$_/redis-server" } split /:/, $ENV{PATH} || '';

    local %ENV = (%ENV, MODULE => $MODULE, NGINX => $NGINX, JSON => 1,
                  KEEP => 1, %env);
    my $out = `$REPO/bench/fleet 2>&1`;

    my %f = (status => $? >> 8, out => $out, logs => []);
    $f{runs} = [ map { JSON::PP->new->decode($_) } grep { /^\{/ }
                 split /\n/, $out ];
    ($f{dir}) = map { $_->{dir} } grep { $_->{dir} } @{$f{runs}};

    find(sub { push @{$f{logs}}, $File::Find::name if /^error\.log$/ },
         $f{dir})
        if $f{dir} && -d $f{dir};

    return \%f;
}

# the mock LLM provider, see Test::LLM::Mock; returns the daemon's pid
sub run_mock_provider {
    my ($self, %opts) = @_;

    my $port = $opts{port} or die "run_mock_provider: no port\n";
    my $name = $opts{name} || "mock_$port";

    my $listen = IO::Socket::INET->new(
        Proto => 'tcp', LocalAddr => "127.0.0.1:$port",
        Listen => 128, ReuseAddr => 1)
        or die "mock $name: can't listen on $port: $!\n";

    $self->{mocks}{$name} = "$self->{dir}/mock/$name.jsonl";

    my $pid = $self->run_daemon(\&Test::LLM::Mock::serve,
        listen  => $listen,
        name    => $name,
        record  => $self->{mocks}{$name},
        handler => $opts{handler},
        idle    => $opts{idle},
    );

    close $listen;
    return $pid;
}

sub mock_file {
    my ($self, $name) = @_;
    return $self->{mocks}{$name} || "$self->{dir}/mock/$name.jsonl";
}

# what a mock provider got: one hash per request, in arrival order
sub mock_requests {
    my ($self, $name) = @_;
    return Test::LLM::Mock::read_records($self->mock_file($name));
}

sub mock_count {
    my ($self, $name) = @_;
    return scalar @{$self->mock_requests($name)};
}


###############################################################################
# end of test checks

sub _log_files {
    my ($self) = @_;
    my @files;
    find({ no_chdir => 1, wanted => sub {
        return unless -f $_;
        push @files, $_ if m{/logs/} || /\.log$/;
    } }, $self->{dir});
    return sort @files;
}

# Scan files for problem lines and canaries.  Returns a hash:
#     problems => [ "file: line", ... ],
#     canaries => [ "file: canary sk-CAN... found", ... ]
sub scan_logs {
    my (%o) = @_;
    my (@problems, @found);

    for my $file (@{$o{files}}) {
        open my $fh, '<', $file or next;
        binmode $fh;
        local $/;
        my $content = <$fh>;
        next unless defined $content;

        (my $short = $file) =~ s{^\Q$o{base}\E/}{} if $o{base};
        $short //= $file;

        LINE: for my $line (split /\n/, $content) {
            next unless grep { $line =~ $_ } @PROBLEMS;
            for my $allow (@{$o{allow} || []}) {
                next LINE if $line =~ $allow;
            }
            push @problems, "$short: $line";
        }

        for my $secret (@{$o{canaries} || []}) {
            next unless length $secret && index($content, $secret) >= 0;
            my $shown = substr($secret, 0, 6) . '...';
            push @found, "$short: canary $shown found";
        }
    }

    return (problems => \@problems, canaries => \@found);
}

sub check_logs {
    my ($self) = @_;

    return if $self->{checked}++;

    $self->stop;
    $self->stop_daemons;

    my %r = scan_logs(files => [ $self->_log_files ], base => $self->{dir},
                      allow => $self->{allow},
                      canaries => $self->{canaries});

    my $tb = Test::More->builder;
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    my ($n) = grep { $OBJECTS[$_] == $self } 0 .. $#OBJECTS;
    my $which = $n ? ' (harness object ' . ($n + 1) . ')' : '';

    $tb->ok(!@{$r{problems}},
            "no alerts, crashes or sanitizer reports$which")
        or $tb->diag(join "\n", grep { defined } @{$r{problems}}[0 .. 19]);

    $tb->ok(!@{$r{canaries}}, "no canary secret in logs$which")
        or $tb->diag(join "\n", @{$r{canaries}});

    if ($ENV{TEST_LLM_CATLOG}) {
        $tb->diag($self->read_file('logs/error.log'));
    }
}

sub _install_follow_up {
    return if $FOLLOW_UP++;

    test2_stack()->top->follow_up(sub {
        my $hub = test2_stack()->top;
        my $plan = $hub->plan;

        return if defined $plan && $plan eq 'SKIP';

        for my $t (@OBJECTS) {
            next unless $t->{pid} == $$;
            $t->check_logs;
        }
    });
}

sub _cleanup {
    my ($self) = @_;
    return unless $self->{pid} == $$;
    $self->stop;
    $self->stop_daemons;
}

END {
    # a test that died: no process stays behind
    $_->_cleanup for @OBJECTS;
}

sub DESTROY {
    my ($self) = @_;
    local $?;

    return unless $self->{pid} == $$;

    $self->_cleanup;

    if ($ENV{TEST_LLM_LEAVE}) {
        print STDERR "# test prefix left at $self->{dir}\n";
    } else {
        eval { rmtree($self->{dir}) };
    }
}


###############################################################################
# HTTP client on raw sockets
#
# A socket carries its unread bytes in ${*$sock}{llm_buf}, so the reading
# helpers can be mixed on one connection.

sub _buf : lvalue {
    my ($sock) = @_;
    ${*$sock}{llm_buf} //= '';
    ${*$sock}{llm_buf};
}

# read more into the buffer: 1 if data came, 0 on EOF, undef on timeout
sub _fill {
    my ($sock, $deadline) = @_;

    while (1) {
        my $left = $deadline - time;
        return undef if $left <= 0;
        next unless IO::Select->new($sock)->can_read($left);

        my $n = sysread($sock, my $data, 65536);
        if (!defined $n) {
            next if $! == EINTR || $! == EAGAIN || $! == EWOULDBLOCK;
            ${*$sock}{llm_eof} = 1;
            return 0;
        }
        if ($n == 0) {
            ${*$sock}{llm_eof} = 1;
            return 0;
        }

        _buf($sock) .= $data;
        return 1;
    }
}

sub _take {
    my ($sock, $len) = @_;
    my $buf = _buf($sock);
    $len = length $buf if !defined $len || $len > length $buf;
    my $data = substr($buf, 0, $len);
    _buf($sock) = substr($buf, $len);
    return $data;
}

# connect, send a raw request; returns the socket or undef
sub http_start {
    my ($request, %o) = @_;

    my $sock = IO::Socket::INET->new(
        PeerAddr => ($o{host} || '127.0.0.1') . ':' . $o{port},
        Timeout  => $o{timeout} || 5,
    ) or return undef;

    $sock->autoflush(1);
    http_send($sock, $request, %o) if defined $request;

    return $sock;
}

# send bytes on a socket, bounded; true when all went out
sub http_send {
    my ($sock, $data, %o) = @_;
    my $deadline = time + ($o{timeout} || 10);
    my $off = 0;

    local $SIG{PIPE} = 'IGNORE';

    while ($off < length $data) {
        return 0 if time > $deadline;
        next unless IO::Select->new($sock)->can_write($deadline - time);
        my $n = syswrite($sock, $data, 65536, $off);
        if (!defined $n) {
            next if $! == EINTR || $! == EAGAIN;
            return 0;
        }
        $off += $n;
    }

    return 1;
}

# whatever arrives until the peer closes or the timeout ends
sub read_all {
    my ($sock, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    1 while _fill($sock, $deadline);
    return _take($sock);
}

# read until the bytes read match $re (or EOF, or timeout); returns the
# bytes read so far, and in list context also whether $re matched
sub read_until {
    my ($sock, $re, $timeout) = @_;
    my $deadline = time + ($timeout // 5);

    while (_buf($sock) !~ $re) {
        last unless _fill($sock, $deadline);
    }

    my $matched = _buf($sock) =~ $re ? 1 : 0;
    my $data = _take($sock);
    return wantarray ? ($data, $matched) : $data;
}

# what arrives within $timeout (returns as soon as something came);
# '' on timeout, undef at EOF with nothing read
sub read_some {
    my ($sock, $timeout) = @_;
    my $deadline = time + ($timeout // 1);

    if (!length _buf($sock)) {
        my $r = _fill($sock, $deadline);
        return undef if defined $r && $r == 0 && !length _buf($sock);
    }

    # take what is already there too
    while (IO::Select->new($sock)->can_read(0)) {
        last unless _fill($sock, time + 0.1);
    }

    return _take($sock);
}

# true when the peer closes the connection within $timeout (data that
# comes first is kept for the next read)
sub conn_closed {
    my ($sock, $timeout) = @_;
    my $deadline = time + ($timeout // 1);
    return 1 if ${*$sock}{llm_eof};
    while (1) {
        my $r = _fill($sock, $deadline);
        return 1 if defined $r && $r == 0;
        return 0 unless defined $r;
    }
}

# read one response framed by Content-Length or chunked encoding (or,
# without either, by the connection's end); returns the raw response or
# what came of it by the timeout
sub read_response {
    my ($sock, $timeout, %o) = @_;
    my $deadline = time + ($timeout // 10);
    my $out = '';

    while (1) {
        while (_buf($sock) !~ /\r\n\r\n/) {
            next if _fill($sock, $deadline);
            return $out . _take($sock);
        }

        my $end = index(_buf($sock), "\r\n\r\n") + 4;
        my $head = _take($sock, $end);
        $out .= $head;

        my ($status) = $head =~ m{^HTTP/\d\.\d\s+(\d+)};
        next if defined $status && $status =~ /^1/ && $status != 101;

        if ($o{head} || (defined $status && $status =~ /^(?:204|304)$/)) {
            return $out;
        }

        if ($head =~ /^transfer-encoding:[^\r]*chunked/im) {
            while (1) {
                my $complete = _chunked_end(_buf($sock));
                if (defined $complete) {
                    return $out . _take($sock, $complete);
                }
                next if _fill($sock, $deadline);
                return $out . _take($sock);
            }
        }

        if ($head =~ /^content-length:\s*(\d+)/im) {
            my $len = $1;
            while (length _buf($sock) < $len) {
                next if _fill($sock, $deadline);
                last;
            }
            return $out . _take($sock, $len);
        }

        1 while _fill($sock, $deadline);
        return $out . _take($sock);
    }
}

# length of a complete chunked body at the start of $data, or undef
sub _chunked_end {
    my ($data) = @_;
    my $pos = 0;

    while (1) {
        my $eol = index($data, "\r\n", $pos);
        return undef if $eol < 0;
        my ($size) = substr($data, $pos, $eol - $pos) =~ /^([0-9a-fA-F]+)/;
        return undef unless defined $size;
        $size = hex $size;
        $pos = $eol + 2;

        if ($size == 0) {
            # trailers, then an empty line
            while (1) {
                my $e = index($data, "\r\n", $pos);
                return undef if $e < 0;
                my $empty = $e == $pos;
                $pos = $e + 2;
                return $pos if $empty;
            }
        }

        return undef if length $data < $pos + $size + 2;
        $pos += $size + 2;
    }
}

# decode a chunked body: (body, complete)
sub dechunk {
    my ($data) = @_;
    my ($body, $pos) = ('', 0);

    while (1) {
        my $eol = index($data, "\r\n", $pos);
        return ($body, 0) if $eol < 0;
        my ($size) = substr($data, $pos, $eol - $pos) =~ /^([0-9a-fA-F]+)/;
        return ($body, 0) unless defined $size;
        $size = hex $size;
        $pos = $eol + 2;

        if ($size == 0) {
            return ($body, _chunked_end(substr($data, 0)) ? 1 : 0);
        }

        if (length $data < $pos + $size) {
            $body .= substr($data, $pos);
            return ($body, 0);
        }

        $body .= substr($data, $pos, $size);
        $pos += $size;
        return ($body, 0) unless substr($data, $pos, 2) eq "\r\n";
        $pos += 2;
    }
}

# Parse a raw response.  Returns a hash ref:
#     status, reason, version, headers (lowercase names; repeated headers
#     joined with ", "), header_list ([name, value] pairs as sent), body
#     (de-chunked), raw_body, chunked, complete (chunked terminated or
#     Content-Length bytes all there; a body ended by close counts as
#     complete)
sub parse_response {
    my ($raw) = @_;
    my %r = (status => undef, headers => {}, header_list => [],
             body => '', raw_body => '', chunked => 0, complete => 0);

    return \%r unless defined $raw && length $raw;

    # skip interim 1xx responses
    while ($raw =~ m{^HTTP/\d\.\d\s+1\d\d\D} && $raw =~ /\r\n\r\n/) {
        $raw =~ s{^.*?\r\n\r\n}{}s;
    }

    my $end = index($raw, "\r\n\r\n");
    my $head = $end >= 0 ? substr($raw, 0, $end) : $raw;
    my $body = $end >= 0 ? substr($raw, $end + 4) : '';

    my ($line, @lines) = split /\r\n/, $head;
    if (defined $line && $line =~ m{^HTTP/(\d\.\d)\s+(\d{3})\s?(.*)$}) {
        @r{qw(version status reason)} = ($1, $2, $3);
    }

    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*?)\s*$/ or next;
        push @{$r{header_list}}, [$k, $v];
        my $lk = lc $k;
        $r{headers}{$lk} = exists $r{headers}{$lk}
            ? "$r{headers}{$lk}, $v" : $v;
    }

    $r{raw_body} = $body;
    $r{head_complete} = $end >= 0 ? 1 : 0;

    if (($r{headers}{'transfer-encoding'} || '') =~ /chunked/i) {
        $r{chunked} = 1;
        ($r{body}, $r{complete}) = dechunk($body);

    } elsif (defined $r{headers}{'content-length'}) {
        $r{body} = $body;
        $r{complete} = $end >= 0
            && length $body == $r{headers}{'content-length'} ? 1 : 0;

    } else {
        $r{body} = $body;
        $r{complete} = $end >= 0 ? 1 : 0;
    }

    return \%r;
}

# one response through one connection: sends, reads to EOF or timeout
sub http {
    my ($request, %o) = @_;
    my $sock = http_start($request, %o) or return undef;
    return read_all($sock, $o{timeout} // 10);
}

sub _header_pairs {
    my ($h) = @_;
    return () unless $h;
    return @$h if ref $h eq 'ARRAY';
    return map { ($_, $h->{$_}) } sort keys %$h;
}

# build a raw request.  Options: headers (hash or pair list), body,
# chunked (1 or chunk size: send the body chunked), keepalive (no
# "Connection: close"), host, version
sub http_request {
    my ($method, $uri, %o) = @_;

    my @h = _header_pairs($o{headers});
    my %have = map { lc($_) => 1 } @h[grep { !($_ % 2) } 0 .. $#h];
    my $body = $o{body};

    my $req = "$method $uri HTTP/" . ($o{version} || '1.1') . "\r\n";
    $req .= "Host: " . ($o{host} || 'localhost') . "\r\n"
        unless exists $have{host};
    $req .= "Connection: close\r\n"
        unless $o{keepalive} || exists $have{connection};

    if (defined $body && $o{chunked}) {
        my $size = $o{chunked} > 1 ? $o{chunked} : 4096;
        $req .= "Transfer-Encoding: chunked\r\n";
        my $chunks = '';
        for (my $i = 0; $i < length $body; $i += $size) {
            my $c = substr($body, $i, $size);
            $chunks .= sprintf("%x\r\n", length $c) . $c . "\r\n";
        }
        $body = $chunks . "0\r\n\r\n";

    } elsif (defined $body) {
        $req .= "Content-Length: " . length($body) . "\r\n"
            unless exists $have{'content-length'};
    }

    for (my $i = 0; $i < @h; $i += 2) {
        $req .= "$h[$i]: $h[$i + 1]\r\n";
    }

    return $req . "\r\n" . (defined $body ? $body : '');
}

sub http_get {
    my ($uri, %o) = @_;
    return http(http_request('GET', $uri, %o), %o);
}

sub http_post {
    my ($uri, $body, %o) = @_;
    my %h = (_header_pairs($o{headers}));
    $o{headers} = [ _header_pairs($o{headers}) ];
    push @{$o{headers}}, 'Content-Type' => 'application/json'
        unless grep { lc eq 'content-type' } keys %h;
    return http(http_request('POST', $uri, %o, body => $body), %o);
}

# Several requests on one connection.  Returns (\@raw_responses, $open):
# $open is true when the connection was still open after the last one.
sub http_keepalive {
    my ($requests, %o) = @_;
    my $timeout = $o{timeout} // 10;
    my @out;

    my $sock = http_start(undef, %o) or return ([], 0);

    for my $req (@$requests) {
        last unless http_send($sock, $req);
        my $raw = read_response($sock, $timeout,
                                head => ($req =~ /^HEAD / ? 1 : 0));
        push @out, $raw;
        last unless length $raw;
    }

    my $open = !conn_closed($sock, $o{linger} // 0.3);
    close $sock;

    return (\@out, $open);
}

# SSE events of a (de-chunked) body: list of { event, data, id } hashes;
# data lines joined with "\n"
sub sse_events {
    my ($body) = @_;
    my @events;

    for my $block (split /\r?\n\r?\n/, $body) {
        my %e;
        for my $line (split /\r?\n/, $block) {
            next if $line =~ /^:/;
            my ($k, $v) = $line =~ /^([^:]+):\s?(.*)$/ or next;
            if ($k eq 'data') {
                $e{data} = defined $e{data} ? "$e{data}\n$v" : $v;
            } else {
                $e{$k} = $v;
            }
        }
        push @events, \%e if %e;
    }

    return @events;
}


###############################################################################
# Redis

# polls $cond every 50 ms for $timeout seconds (5); true when it held
sub wait_until {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout || 5);
    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.05;
    }
    return 0;
}

# nodes of the fleet that run nowhere, as a node's sync registers itself
# (docs/design.md section 4): seen now in {llm:nodes}, listed in
# {llm:nodes}:ids
sub fake_nodes {
    my ($port, @ids) = @_;
    my $now = int(time * 1000);
    for my $id (@ids) {
        redis_command($port, 'ZADD', '{llm:nodes}', $now, $id);
        redis_command($port, 'ZADD', '{llm:nodes}:ids', 0, $id);
    }
}

# The fleet's counts in Redis (docs/design.md section 4): {PREFIX:w}:ix
# gives each route an index (and "#epoch" the keys' epoch), and
# {PREFIX:w}:EPOCH:SEC holds the counters of second SEC, 32-bit
# big-endian: route i's requests ("r") at 2i, its retries ("x") at 2i+1.

# (epoch, the route's index), each undef when there is none
sub fleet_index {
    my ($port, $route, %o) = @_;
    my $ix = '{' . ($o{prefix} // 'llm') . ':w}:ix';
    my $epoch = redis_command($port, 'HGET', $ix, '#epoch');
    return (undef, undef) unless defined $epoch;
    return ($epoch, redis_command($port, 'HGET', $ix, $route));
}

# the fleet's count of a route in one second: fleet_count(port, route,
# "r" or "x", sec, prefix => "llm")
sub fleet_count {
    my ($port, $route, $kind, $sec, %o) = @_;
    my ($epoch, $i) = fleet_index($port, $route, %o);
    return 0 unless defined $i;
    my $v = redis_command($port, 'GET',
                          '{' . ($o{prefix} // 'llm') . ":w}:$epoch:$sec");
    my $at = 4 * (2 * $i + ($kind eq 'x' ? 1 : 0));
    return 0 if !defined $v || length($v) < $at + 4;
    return unpack('l>', substr($v, $at, 4));
}

# the seconds Redis holds counts of (any route): { sec => key }
sub fleet_seconds {
    my ($port, %o) = @_;
    my $w = '{' . ($o{prefix} // 'llm') . ':w}';
    my $epoch = redis_command($port, 'HGET', "$w:ix", '#epoch');
    return {} unless defined $epoch;
    my $keys = redis_command($port, 'KEYS', "$w:$epoch:*") || [];
    return { map { /:(\d+)$/ ? ($1 => $_) : () } @$keys };
}

# the sum of a route's counts over the seconds Redis holds
sub fleet_sum {
    my ($port, $route, $kind, %o) = @_;
    my $secs = fleet_seconds($port, %o);
    my $sum = 0;
    $sum += fleet_count($port, $route, $kind, $_, %o) for keys %$secs;
    return $sum;
}

# what other nodes would have counted: fleet_add(port, route, "r" or
# "x", sec, n, prefix => "llm"), an index given as the nodes' script
# gives one
sub fleet_add {
    my ($port, $route, $kind, $sec, $n, %o) = @_;
    my $w = '{' . ($o{prefix} // 'llm') . ':w}';

    redis_command($port, 'HSETNX', "$w:ix", '#epoch',
                  sprintf('%016x', int(rand(2**32)) * 2**20 + $$));
    redis_command($port, 'HSETNX', "$w:ix", '#n', 0);

    my ($epoch, $i) = fleet_index($port, $route, %o);
    unless (defined $i) {
        $i = redis_command($port, 'HINCRBY', "$w:ix", '#n', 1) - 1;
        redis_command($port, 'HSETNX', "$w:ix", $route, $i)
            or $i = redis_command($port, 'HGET', "$w:ix", $route);
    }

    my $key = "$w:$epoch:$sec";
    redis_command($port, 'BITFIELD', $key, 'OVERFLOW', 'SAT', 'INCRBY',
                  'i32', '#' . (2 * $i + ($kind eq 'x' ? 1 : 0)), $n);
    redis_command($port, 'PEXPIRE', $key, 63000);
}

# one command over RESP; returns the reply (errors die), bounded
sub redis_command {
    my ($port, @args) = @_;

    my $sock = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port",
                                     Timeout => 2)
        or die "redis: connect to $port: $!\n";

    my $cmd = '*' . @args . "\r\n";
    $cmd .= '$' . length($_) . "\r\n$_\r\n" for @args;
    http_send($sock, $cmd) or die "redis: send failed\n";

    my $deadline = time + 5;
    my $reply = _redis_reply($sock, $deadline);
    close $sock;
    return $reply;
}

sub _redis_line {
    my ($sock, $deadline) = @_;
    while (index(_buf($sock), "\r\n") < 0) {
        _fill($sock, $deadline) or die "redis: no reply\n";
    }
    my $line = _take($sock, index(_buf($sock), "\r\n") + 2);
    $line =~ s/\r\n$//;
    return $line;
}

sub _redis_reply {
    my ($sock, $deadline) = @_;
    my $line = _redis_line($sock, $deadline);
    my ($type, $rest) = (substr($line, 0, 1), substr($line, 1));

    return $rest if $type eq '+' || $type eq ':';
    die "redis: $rest\n" if $type eq '-';

    if ($type eq '$') {
        return undef if $rest < 0;
        while (length _buf($sock) < $rest + 2) {
            _fill($sock, $deadline) or die "redis: short reply\n";
        }
        my $data = _take($sock, $rest + 2);
        return substr($data, 0, $rest);
    }

    if ($type eq '*') {
        return undef if $rest < 0;
        return [ map { _redis_reply($sock, $deadline) } 1 .. $rest ];
    }

    die "redis: bad reply \"$line\"\n";
}


1;
