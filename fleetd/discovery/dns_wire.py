"""The DNS wire format through dnslib, for fleetd's responder (fleetd/discovery/dns.py): a
question answered from the view, error replies, truncation. Imported by the responder's first
packet, not at start-up (dnslib: ~0.3 MB of an idle fleetd's RSS)."""

from __future__ import annotations

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSHeader, DNSRecord
from dnslib.label import DNSBuffer

from fleetd.discovery.view import FOREIGN, NXDOMAIN, ServiceView, resolve


def _rr(record, ttl: int) -> RR:
    name = record.name + "."
    if record.rtype == "A":
        return RR(name, QTYPE.A, rdata=A(record.data), ttl=ttl)
    if record.rtype == "AAAA":
        return RR(name, QTYPE.AAAA, rdata=AAAA(record.data), ttl=ttl)
    priority, weight, port, target = record.data
    return RR(name, QTYPE.SRV, rdata=SRV(priority, weight, port, target + "."), ttl=ttl)


def answer_local(request: DNSRecord, view: ServiceView, ttl: int, memo: dict | None = None) -> DNSRecord | None:
    """The reply for a parsed request, or None when its question is outside the domain.

    `memo` (a dict kept for one view) remembers each question's outcome as dnslib RRs, by the
    lower-cased name and type, so that a repeated question costs no resolution and no RR
    building; the reply still echoes the question exactly as asked (letter case included)."""
    reply = request.reply()  # qr, aa, rd and ra set; the question echoed
    reply.header.ra = 0
    if request.header.opcode != 0 or len(request.questions) != 1:
        reply.header.rcode = RCODE.NOTIMP if request.header.opcode != 0 else RCODE.FORMERR
        reply.header.aa = 0
        return reply
    q = request.q
    key = (tuple(label.lower() for label in q.qname.label), q.qtype)
    outcome = memo.get(key) if memo is not None else None
    if outcome is None:
        result = resolve(view, str(q.qname), QTYPE.get(q.qtype, str(q.qtype)))
        outcome = (result.kind, [_rr(r, ttl) for r in result.answers], [_rr(r, ttl) for r in result.additional])
        if memo is not None:
            memo[key] = outcome
    kind, answers, additional = outcome
    if kind == FOREIGN:
        return None
    if kind == NXDOMAIN:
        reply.header.rcode = RCODE.NXDOMAIN
        return reply
    reply.rr = list(answers)
    reply.ar = list(additional)
    return reply


def error_reply(data: bytes, rcode: int) -> bytes | None:
    """A bare reply with `rcode` for a packet whose header at least parses (else None)."""
    if len(data) < 12:
        return None
    try:
        header = DNSHeader.parse(DNSBuffer(data[:12]))
    except Exception:
        return None
    if header.qr:
        return None  # never answer an answer
    reply = DNSRecord(DNSHeader(id=header.id, qr=1, opcode=header.opcode, rd=header.rd, rcode=rcode))
    return reply.pack()


def truncate(reply: DNSRecord, limit: int) -> bytes:
    packed = reply.pack()
    if len(packed) <= limit:
        return packed
    short = DNSRecord(reply.header, questions=reply.questions)
    short.header.tc = 1
    return short.pack()
