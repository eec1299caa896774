"""Where a webhook may send (CONTRACT 4.7): the URL's host is resolved
here, each address checked, and the request made to a checked address
(with the URL's host in the Host header and as the TLS server name), so
that a name that resolves to something else at connect time cannot slip
past the check.

Always refused: link-local addresses (169.254.0.0/16, fe80::/10, where
cloud metadata services live) and unspecified ones (0.0.0.0, ::). When
INSTANCES_WEBHOOK_ALLOW is set (comma-separated CIDRs), an address must
also be inside one of them.
"""
import ipaddress
import socket


class Refused(Exception):
    """No address of the target may be connected to; `reason` is the
    last_error word (`dns` or `blocked address`)."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def parse_allow(text):
    """The networks of an INSTANCES_WEBHOOK_ALLOW value (empty: no list)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False)
                 for part in (text or "").split(",") if part.strip())


def permitted(address, allow=()):
    ip = ipaddress.ip_address(address)
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    if ip.is_link_local or ip.is_unspecified:
        return False
    return not allow or any(ip in network for network in allow)


def resolve(host, port):
    """The addresses `host` resolves to (the system resolver)."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def checked_address(host, port, allow=(), resolver=resolve):
    """The first address of `host` that may be connected to, or Refused."""
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError):
        raise Refused("dns") from None
    for address in addresses:
        if permitted(address, allow):
            return address
    raise Refused("blocked address" if addresses else "dns")
