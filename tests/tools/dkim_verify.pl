#!/usr/bin/perl
# dkim_verify.pl NAMESERVER PORT < message
#
# Verifies the DKIM signatures of one message with Perl's Mail::DKIM, an
# implementation independent of the dkimpy that signs in spoold, asking the
# DNS server at NAMESERVER:PORT (the tests' fakenet server) for the keys.
# Prints one line per signature -- "RESULT d=DOMAIN s=SELECTOR a=ALGORITHM
# h=SIGNED:HEADERS [(DETAIL)]" -- and exits 0 only when there is at least one
# signature and every one passes.
use strict;
use warnings;
use Mail::DKIM::DNS;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my ($nameserver, $port) = @ARGV;
die "usage: $0 NAMESERVER PORT < message\n" unless defined $port;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => [$nameserver], port => $port, recurse => 0,
    udp_timeout => 5, tcp_timeout => 5, retry => 1));

my $verifier = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) {
    $line =~ s/\r?\n\z/\015\012/;
    $verifier->PRINT($line);
}
$verifier->CLOSE();

my @signatures = $verifier->signatures;
my $all_pass = @signatures > 0;
for my $signature (@signatures) {
    my $result = $signature->result;
    $all_pass = 0 if $result ne "pass";
    my $detail = $signature->result_detail;
    printf "%s d=%s s=%s a=%s h=%s%s\n", $result, $signature->domain, $signature->selector,
        $signature->algorithm, $signature->get_tag("h") =~ s/\s+//gr,
        ($detail ne $result ? " ($detail)" : "");
}
exit($all_pass ? 0 : 1);
