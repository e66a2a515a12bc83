"""The TOML configuration file: ``load_config(path) -> Config``.

Every mistake raises ``ConfigError``, whose ``str()`` is one line naming the
file, the key and what is wrong::

    smtppeer.toml: routes."example.org": "tcp:nohost" is not a client endpoint description (...)

Key paths are written the way TOML spells them: dotted keys, quoted when they
are not bare keys, and ``[N]`` (counting from 0) for the N-th element of an
array such as ``[[listen]]``.

The schema (``examples/`` has annotated files for each use)::

    hostname = "mail.example.org"       # default: this machine's host name
    data_dir = "./smtppeer-data"        # relative to the working directory, as on the command line
    relay_from = ["127.0.0.0/8"]        # client networks that may use the "*" route
    dns = "127.0.0.1:53"                # HOST[:PORT] for MX routes; default: the system resolver
    honour_source_routes = true         # false: route <@a,@b:u@c> by u@c (RFC 5321)
    accept_any_domain = false           # true: any domain not routed or held is local (a test's
                                        #   capturing server; never on a real mail host)
    json_log = false
    metrics = "tcp:9101:interface=127.0.0.1"   # serve Prometheus metrics at /metrics; default: none

    [tls]                               # the server certificate for STARTTLS; none: STARTTLS is not offered
    certificate = "cert.pem"            # PEM (with its chain); relative paths as data_dir (working directory)
    key = "key.pem"                     # its PEM private key (not encrypted)

    [[listen]]                          # repeatable; none given: tcp:2525:interface=127.0.0.1
    endpoint = "tcp:25"                 # a Twisted server endpoint description; for mode = "odmr"
                                        #   it may be omitted: tcp:366 (RFC 2645)
    mode = "smtp"                       # or "odmr" (RFC 2645: EHLO, AUTH, ATRN, QUIT only)
    turn = false                        # may a configured peer say TURN here? (not on odmr)
    starttls = true                     # offer STARTTLS when [tls] is set (given as true: [tls] is needed)
    require_tls = false                 # nothing but EHLO/HELO/STARTTLS/NOOP/RSET/QUIT before STARTTLS
    auth_in_clear = false               # allow AUTH PLAIN/LOGIN without TLS (a lab on loopback)
    max_auth_failures = 3               # then 421 and close (at least 1)
    processes = 1                       # >1: that many processes accept here (receive only:
                                        # no TURN/ETRN, not with turn or odmr); a busy MX port
    # (``listen = ["tcp:25", ...]`` is short for smtp listeners without TURN)

    [domains."example.org"]             # a local domain; none given: the hostname and localhost
    catch_all = false                   # default: true when no users are listed
    users = ["alice", "bob"]
    aliases = { postmaster = "alice", info = ["alice", "bob@example.net"] }

    [routes]                            # DOMAIN, .DOMAIN (its subdomains) or * (anything, trusted clients)
    "partner.example" = "tcp:host=10.0.0.5:port=25"   # a Twisted client endpoint
    ".example.net" = "mx"               # the domain's MX hosts
    "*" = "peer:provider"               # through a named peer (it needs an endpoint)

    [holds]                             # DOMAIN or .DOMAIN -> the peer whose hold queue keeps its mail
    "dialup.example" = "dialup"

    [peers.dialup]                      # a host this one exchanges mail with
    domains = ["dialup.example"]        # what it owns and accepts (".DOMAIN": every subdomain)
    addresses = ["192.0.2.10"]          # how it is recognised when it calls in (until AUTH)
    endpoint = "tcp:host=dialup.example:port=25"      # how to reach it (polls, routes): its SMTP port
    odmr_endpoint = "tcp:host=dialup.example:port=366"  # its ODMR port (RFC 2645): ATRN polls only
    send = "now"                        # mail routed through it: at once, or "on-poll" (on the next
                                        #   poll of it: a [[polls]] table for it is needed)
    username = "dialup"                 # the credentials of the relationship, used in whichever
    password = "..."                    #   direction we connect: it logs in to us, we log in to it
    # password_hash = "SCRAM-SHA-256$4096:..."  # instead of password (smtppeer hash-password): then only
                                        #   the peer can log in to us, not we to it (and no CRAM-MD5)
    tls = "opportunistic"               # when we connect to it: "none", "opportunistic", "required"
                                        #   (any certificate) or "verify"
    ca_file = "ca.pem"                  # tls = "verify" only: its trust roots (default: the system's)
    tls_name = "mail.provider.example"  # tls = "verify" only: the name its certificate must carry
                                        #   (default: the endpoint's host)

    [users.alice]                       # may AUTH to submit (and so relay) mail; owns no domains
    password = "..."                    # or password_hash = "SCRAM-SHA-256$4096:..." (smtppeer hash-password)
                                        # a login name is one user's or one peer's username, never both;
                                        # it may be an address: [users."alice@example.org"]

    [[polls]]                           # repeatable
    peer = "provider"                   # a peer with an endpoint (atrn: or an odmr_endpoint)
    interval = "5m"                     # seconds, or "30s", "5m", "1h", "1d", "1h30m"
    jitter = 0.1                        # +/- this fraction of the interval
    method = "turn"                     # or "atrn" (RFC 2645: the peer needs username and password;
                                        #   it calls odmr_endpoint, sending to endpoint first)
                                        #   or "etrn" (RFC 1985)
    domains = ["dialup.example"]        # atrn and etrn only: what to ask for (default: atrn without an
                                        #   argument, etrn for each local domain); etrn also takes
                                        #   "@dialup.example" (and subdomains) and "#provider" (a queue)
    max_backoff = "1h"                  # after failures, wait at most this long

    [limits]
    message_size = "50M"                # octets, or with a K, M or G suffix (binary)
    recipients = 1000                   # at least 100 (RFC 5321)
    command_line = 512                  # at least 512
    text_line = 1000                    # at least 1000
    bad_commands = 20
    command_timeout = "5m"
    command_line_time = "1m"            # a command line begun must end within this (a slow-loris)
    data_timeout = "10m"
    reply_timeout = "5m"
    data_block_timeout = "3m"
    data_end_timeout = "10m"
    max_connections = 200               # sessions per listener; more get 421 4.7.0
    max_connections_per_client = 20     # sessions per listener from one address (0: no limit)
    client_ipv6_prefix_length = 84      # an IPv6 client is counted as its /84 (128: the address)
    auth_failures_per_client = 10       # failed AUTHs from one address, all sessions, before its AUTH
                                        #   gets 454 4.7.0 for auth_backoff (0: no budget)
    auth_backoff = "1m"                 # doubled with each further failure, up to auth_backoff_max
    auth_backoff_max = "1h"
    queue_minfree = 0                   # free space below which MAIL gets 452 4.3.1 (0: not checked)
    max_received = 100
    queue_lifetime = "5d"
    retry_interval = "1m"
    retry_interval_max = "1h"           # default: 1h, or retry_interval if that is longer
    outgoing_connections = 20           # sending: sessions at once, in all
    outgoing_connections_per_destination = 4   # to one endpoint or one domain's MX hosts
    messages_per_connection = 100
    connect_timeout = "30s"

Defaults are those of ``twistd smtppeer`` with no options.

The reader is split by section, one module each: ``errors`` (``ConfigError``
and how keys and values are shown), ``values`` (the shared checks: types,
durations, sizes, domains, endpoints, addresses), ``listeners``, ``domains``
(domains, routes, holds), ``peers`` (peers, users, the server's TLS files),
``polls`` and ``limits``; ``reader`` puts them together for the whole
document.  ``loops`` is not part of reading: the warnings of ``smtppeer
check-config`` about holds a peer cannot take.
"""

from .errors import ConfigError, format_key
from .reader import load_config, loads_config, parse_config, read_document
from .values import format_duration, format_size

__all__ = [
    "ConfigError",
    "format_duration",
    "format_key",
    "format_size",
    "load_config",
    "loads_config",
    "parse_config",
    "read_document",
]
