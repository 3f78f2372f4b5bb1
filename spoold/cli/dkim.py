"""DKIM key management.

    spoold dkim keygen DOMAIN SELECTOR [--dir D] [--bits 2048] [--ed25519]
        write a private key (mode 0600) and print the DNS TXT record to
        publish and the spoold.toml lines to add (spoold/dkimkeys.py)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spoold.config import Config
from spoold.dkimkeys import generate


def cmd_keygen(args: argparse.Namespace, config: Config) -> int:
    pair = generate(args.domain, args.selector, Path(args.dir), args.bits, args.ed25519)
    print(f"Private key written to {pair.key_file} (mode 0600).\n")
    print(f"Publish this DNS TXT record at {pair.dns_name}:\n")
    print(pair.zone_line())
    print("\nThen add to spoold.toml (and reload: systemctl reload spoold, or SIGHUP):\n")
    print(pair.config, end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dkim", help="DKIM signing keys")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    k = verbs.add_parser("keygen", help="make a key pair; print the DNS record and config")
    k.add_argument("domain", help="the From domain to sign for")
    k.add_argument("selector", help="the selector (DNS label) the key is published under")
    k.add_argument("--dir", default=".", help="where to write DOMAIN.SELECTOR.key (default: .)")
    k.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    k.add_argument("--ed25519", action="store_true", help="an Ed25519 key (ed25519-sha256)")
    k.set_defaults(handler=cmd_keygen)
