"""Service discovery, pure parts: [X-Service] parsing/validation, the endpoint view and DNS
resolution from it, health thresholds, and the DNS responder fed hypothesis-made packets."""

from __future__ import annotations

import asyncio

import pytest
from dnslib import QTYPE, RCODE, DNSRecord
from hypothesis import example, given, settings
from hypothesis import strategies as st

from _depth import examples
from fleetd.discovery.checks import Health, next_health
from fleetd.discovery.dns import DnsResponder
from fleetd.discovery.publisher import declared_services, wanted_endpoints
from fleetd.discovery.view import ANSWER, FOREIGN, NXDOMAIN, ServiceView, resolve
from fleetd.errors import InvalidUnitOptions
from fleetd.registry.services import CRITICAL, Endpoint, decode_endpoint, skydns_path
from fleetd.unit.file import UnitFile
from fleetd.unit.requirements import validate_unit
from fleetd.unit.service import services_of, unit_label, with_host


def unit(body: str) -> UnitFile:
    return UnitFile.parse("[Service]\nExecStart=/bin/true\n\n[X-Service]\n" + body)


# --------------------------------------------------------------------------- parser


def test_full_declaration_and_defaults():
    (web,) = services_of(unit("Name=web\nPort=8080\nProtocol=http\nTags=blue, v2\n"
                              "Check=http://:8080/health\nCheckInterval=2s\nFall=3\n"), "web.service")
    assert (web.name, web.port, web.protocol, web.tags) == ("web", 8080, "http", ("blue", "v2"))
    assert web.check.kind == "http" and web.check.interval == 2.0 and web.check.timeout == 2.0
    assert (web.check.rise, web.check.fall) == (1, 3)
    (plain,) = services_of(unit("Name=db\nPort=5432\n"), "db.service")
    assert plain.protocol == "tcp" and plain.check is None and plain.transport == "tcp"


def test_several_services_one_per_name_also_across_sections():
    u = UnitFile.parse("[X-Service]\nName=web\nPort=80\n\n[Unit]\nDescription=x\n\n"
                       "[X-Service]\nName=metrics\nPort=9100\nProtocol=udp\n")
    assert [(s.name, s.port, s.transport) for s in services_of(u, "a.service")] == [
        ("web", 80, "tcp"), ("metrics", 9100, "udp")]


def test_specifiers_expand_and_templates_defer():
    u = unit("Name=web-%i\nPort=80%i\nCheck=tcp://:80%i\nTags=%p,%H\n")
    (s,) = services_of(u, "web@1.service", hostname="node1")
    assert (s.name, s.port, s.check.target, s.tags) == ("web-1", 801, ":801", ("web", "node1"))
    validate_unit(u, "web@.service")  # the template passes: %i is known only per instance


@pytest.mark.parametrize("body,fragment", [
    ("Name=Web\nPort=80\n", "Name= 'Web' is not a DNS label"),
    ("Name=-web\nPort=80\n", "not a DNS label"),
    ("Name=" + "a" * 64 + "\nPort=80\n", "not a DNS label"),
    ("Name=web\n", "Port= is required"),
    ("Name=web\nPort=0\n", "Port= '0' is not a port number"),
    ("Name=web\nPort=65536\n", "is not a port number"),
    ("Name=web\nPort=http\n", "is not a port number"),
    ("Name=web\nPort=80\nProtocol=sctp\n", "Protocol= 'sctp' is not one of"),
    ("Name=web\nPort=80\nColour=red\n", "unknown key 'Colour'"),
    ("Port=80\nName=web\n", "Port= before the first Name="),
    ("Name=web\nPort=80\nCheck=ftp://x/\n", "unknown check scheme"),
    ("Name=web\nPort=80\nCheck=http://x:99999/\n", "bad port in the URL"),
    ("Name=web\nPort=80\nCheck=http:///health\n", "needs a host or a port"),
    ("Name=web\nPort=80\nCheck=tcp://host\n", "expected tcp://[host]:port"),
    ("Name=web\nPort=80\nCheck=\"unclosed\n", "cannot split the command"),
    ("Name=web\nPort=80\nCheckInterval=soon\n", "CheckInterval= 'soon' is not a duration"),
    ("Name=web\nPort=80\nFall=0\n", "Fall= '0' is not a whole number from 1"),
    ("Name=web\nPort=80\nPort=81\n", "Port= given twice"),
    ("Name=web\nPort=80\nName=web\nPort=81\n", "service 'web' declared twice"),
    ("Name=web\nPort=80\nTags=a b,!x\n", "Tags= '!x' is not a tag"),
])
def test_bad_declarations_fail_with_one_line_naming_unit_and_key(body, fragment):
    with pytest.raises(InvalidUnitOptions) as err:
        validate_unit(unit(body), "web.service")
    message = str(err.value)
    assert fragment in message and message.startswith("unit web.service: [X-Service]") and "\n" not in message


@given(st.text(max_size=30), st.text(max_size=8))
@example("0", "²")  # str.isdigit() is true for "²", int() refuses it (a full run found it)
def test_any_name_and_port_either_validates_or_raises_the_typed_error(name, port):
    try:
        u = UnitFile.from_options([("X-Service", "Name", name.strip()), ("X-Service", "Port", port.strip())])
    except Exception:
        return  # not representable as a unit file at all
    try:
        (s,) = services_of(u, "x.service")
    except InvalidUnitOptions:
        return
    assert 1 <= s.port <= 65535 and len(s.name) <= 63 and s.name == s.name.lower()


def test_unit_label_and_check_host():
    assert unit_label("web@1.service") == "web-1"
    assert unit_label("My_App.Service.service") == "my-app-service"
    (s,) = services_of(unit("Name=web\nPort=80\nCheck=http://:80/h\n"), "w.service")
    assert with_host(s, "10.0.0.5").check.target == "http://10.0.0.5:80/h"
    (t,) = services_of(unit("Name=web\nPort=80\nCheck=tcp://:80\n"), "w.service")
    assert with_host(t, "10.0.0.5").check.target == "10.0.0.5:80"


# --------------------------------------------------------------------------- health and wanted endpoints


@pytest.mark.parametrize("probes,rise,fall,expected", [
    ("", 1, 2, False),
    ("P", 1, 2, True),
    ("P", 2, 2, False),
    ("PP", 2, 2, True),
    ("PF", 1, 2, True),
    ("PFF", 1, 2, False),
    ("PFP", 1, 2, True),
    ("PFFP", 2, 2, False),
    ("PFFPP", 2, 2, True),
    ("F", 1, 1, False),
    ("PF", 1, 1, False),
])
def test_rise_and_fall(probes, rise, fall, expected):
    health = Health()
    for p in probes:
        health = next_health(health, p == "P", rise, fall)
    assert health.healthy is expected


@given(st.lists(st.booleans(), max_size=30), st.integers(1, 5), st.integers(1, 5))
def test_health_flips_only_on_a_full_run(probes, rise, fall):
    health = Health()
    for ok in probes:
        before = health
        health = next_health(health, ok, rise, fall)
        if health.healthy and not before.healthy:
            assert health.passes >= rise
        if before.healthy and not health.healthy:
            assert health.fails >= fall


def test_wanted_endpoints_need_active_unit_and_passing_check():
    files = {"web@1.service": unit("Name=web\nPort=80\nCheck=tcp://:80\n"),
             "db.service": unit("Name=db\nPort=5432\n"),
             "plain.service": UnitFile.parse("[Service]\nExecStart=/bin/true\n")}
    declared = declared_services(files, "h", "10.0.0.1")
    assert set(declared) == {("web@1.service", "web"), ("db.service", "db")}
    active = {"web@1.service": True, "db.service": False}
    wanted = wanted_endpoints(declared, active, {}, "m1", "10.0.0.1")
    assert list(wanted) == [("web@1.service", "web")] and wanted[("web@1.service", "web")].health == CRITICAL
    passing = {("web@1.service", "web"): next_health(Health(), True, 1, 2)}
    ep = wanted_endpoints(declared, active, passing, "m1", "10.0.0.1")[("web@1.service", "web")]
    assert ep.healthy and (ep.host, ep.port, ep.label, ep.machine_id) == ("10.0.0.1", 80, "web-1", "m1")
    active["db.service"] = True
    assert wanted_endpoints(declared, active, passing, "m1", "10.0.0.1")[("db.service", "db")].healthy


# --------------------------------------------------------------------------- records and the view


def ep(n: int, service: str = "web", health: str = "passing", proto: str = "http") -> Endpoint:
    return Endpoint(service, f"{service}@{n}.service", f"m{n}", f"10.0.0.{n}", 8080, proto, ("v2",), health,
                    f"{service}-{n}")


def test_record_roundtrip_and_foreign_records_rejected():
    e = ep(1)
    import json
    key = f"/p/services/web/m1/web@1.service"
    assert decode_endpoint(key, json.dumps(e.to_json()).encode(), "/p/services/") == e
    for value, why in [(b"{not json", "not valid JSON"), (b"[1,2]", "not an endpoint"),
                       (b'{"service":"web"}', "not an endpoint"),
                       (json.dumps({**e.to_json(), "port": 0}).encode(), "bad port")]:
        with pytest.raises(ValueError, match=why):
            decode_endpoint(key, value, "/p/services/")
    with pytest.raises(ValueError, match="does not match its key"):
        decode_endpoint("/p/services/api/m1/web@1.service", json.dumps(e.to_json()).encode(), "/p/services/")
    assert skydns_path("fleet.local") == "local/fleet/" and skydns_path("a.B.c.") == "c/b/a/"


VIEW = ServiceView.build([ep(1), ep(2), ep(3, health=CRITICAL), ep(4, "dns", proto="udp")], "fleet.local")


@pytest.mark.parametrize("name,qtype,kind,data", [
    ("web.fleet.local", "A", ANSWER, ["10.0.0.1", "10.0.0.2"]),
    ("WEB.Fleet.Local.", "A", ANSWER, ["10.0.0.1", "10.0.0.2"]),
    ("web.fleet.local", "AAAA", ANSWER, []),
    ("_web._tcp.fleet.local", "SRV", ANSWER, [(10, 10, 8080, "web-1.web.fleet.local"),
                                              (10, 10, 8080, "web-2.web.fleet.local")]),
    ("_web._udp.fleet.local", "SRV", ANSWER, []),
    ("_dns._udp.fleet.local", "SRV", ANSWER, [(10, 10, 8080, "dns-4.dns.fleet.local")]),
    ("web-2.web.fleet.local", "A", ANSWER, ["10.0.0.2"]),
    ("web-3.web.fleet.local", "A", ANSWER, []),  # exists, unhealthy: NODATA
    ("web-9.web.fleet.local", "A", NXDOMAIN, []),
    ("nothing.fleet.local", "A", NXDOMAIN, []),
    ("_nothing._tcp.fleet.local", "SRV", NXDOMAIN, []),
    ("a.b.c.fleet.local", "A", NXDOMAIN, []),
    ("example.com", "A", FOREIGN, []),
    ("fleet.local.example.com", "A", FOREIGN, []),
])
def test_resolve(name, qtype, kind, data):
    result = resolve(VIEW, name, qtype)
    assert result.kind == kind
    assert [r.data for r in result.answers] == data


def test_srv_carries_target_addresses_and_summaries_count_health():
    result = resolve(VIEW, "_web._tcp.fleet.local", "SRV")
    assert [(r.name, r.data) for r in result.additional] == [("web-1.web.fleet.local", "10.0.0.1"),
                                                              ("web-2.web.fleet.local", "10.0.0.2")]
    assert [(s.service, s.healthy, s.total) for s in VIEW.services()] == [("dns", 1, 1), ("web", 2, 3)]


endpoints_st = st.builds(
    Endpoint, service=st.sampled_from(["web", "db", "a-b"]), unit=st.sampled_from(["u1.service", "u2.service"]),
    machine_id=st.sampled_from(["m1", "m2"]), host=st.sampled_from(["10.0.0.1", "10.0.0.2", "::1", "host"]),
    port=st.integers(1, 65535), protocol=st.sampled_from(["tcp", "udp", "http"]),
    health=st.sampled_from(["passing", "critical"]), label=st.sampled_from(["u1", "u2"]))


@given(st.lists(endpoints_st, max_size=12), st.sampled_from(["web", "db", "a-b", "zzz"]))
def test_dns_answers_exactly_the_healthy_addresses(endpoints, service):
    view = ServiceView.build(endpoints, "fleet.local")
    result = resolve(view, f"{service}.fleet.local", "A")
    healthy_v4 = {e.host for e in endpoints if e.service == service and e.healthy and e.host.count(".") == 3}
    if not any(e.service == service for e in endpoints):
        assert result.kind == NXDOMAIN
    else:
        assert result.kind == ANSWER and {r.data for r in result.answers} == healthy_v4
    assert ServiceView.build(list(reversed(endpoints)), "fleet.local").endpoints == view.endpoints


# --------------------------------------------------------------------------- the responder


def responder(upstreams=None) -> DnsResponder:
    return DnsResponder(lambda: VIEW, upstreams=upstreams)


async def test_responder_answers_refuses_and_formerrs():
    r = responder()
    reply = DNSRecord.parse(await r.handle(DNSRecord.question("web.fleet.local", "A").pack()))
    assert sorted(str(a.rdata) for a in reply.rr) == ["10.0.0.1", "10.0.0.2"] and reply.header.aa
    srv = DNSRecord.parse(await r.handle(DNSRecord.question("_web._tcp.fleet.local", "SRV").pack()))
    assert [a.rdata.port for a in srv.rr] == [8080, 8080] and len(srv.ar) == 2
    nx = DNSRecord.parse(await r.handle(DNSRecord.question("nope.fleet.local", "A").pack()))
    assert nx.header.rcode == RCODE.NXDOMAIN
    refused = DNSRecord.parse(await r.handle(DNSRecord.question("example.com", "A").pack()))
    assert refused.header.rcode == RCODE.REFUSED
    bad = DNSRecord.parse(await r.handle(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07broken"))
    assert bad.header.rcode == RCODE.FORMERR and bad.header.id == 0x1234
    assert await r.handle(b"\x01") is None  # not even a header: dropped


async def test_udp_replies_are_truncated_over_512_bytes():
    many = ServiceView.build([Endpoint("big", f"u{i}.service", "m", f"10.0.{i // 250}.{i % 250 + 1}", 80,
                                       label=f"u{i}") for i in range(100)], "fleet.local")
    r = DnsResponder(lambda: many)
    question = DNSRecord.question("big.fleet.local", "A").pack()
    udp = DNSRecord.parse(await r.handle(question, udp=True))
    assert udp.header.tc == 1 and not udp.rr
    tcp = DNSRecord.parse(await r.handle(question, udp=False))
    assert len(tcp.rr) == 100


QUESTIONS = [bytes(DNSRecord.question(n, t).pack())
             for n in ["web.fleet.local", "_web._tcp.fleet.local", "x.y", "fleet.local"]
             for t in ["A", "SRV", "AAAA", "ANY", "TXT", "MX"]]


@settings(max_examples=examples(300), deadline=None)
@given(st.one_of(
    st.binary(max_size=600),
    st.builds(lambda q, junk, cut: (q + junk)[:cut],
              st.sampled_from(QUESTIONS),
              st.binary(max_size=40), st.integers(0, 80)),
    st.builds(lambda b, flips: bytes((x ^ f) for x, f in zip(b, flips + bytes(len(b)))),
              st.sampled_from(QUESTIONS), st.binary(max_size=40)),
))
def test_malformed_packets_never_crash_or_stall_the_responder(packet):
    r = responder()

    async def one():
        return await asyncio.wait_for(r.handle(packet), 1.0)  # refusing: nothing waits on a network

    reply = asyncio.run(one())
    assert reply is None or isinstance(reply, (bytes, bytearray))
    if reply is not None:
        assert DNSRecord.parse(reply).header.qr == 1


async def test_cached_answers_carry_each_query_id_and_follow_view_changes():
    current = {"view": VIEW}
    r = DnsResponder(lambda: current["view"])
    q1 = DNSRecord.question("web.fleet.local", "A")
    q2 = DNSRecord.question("web.fleet.local", "A")
    q2.header.id = (q1.header.id + 1) & 0xFFFF
    a1 = DNSRecord.parse(await r.handle(q1.pack()))
    a2 = DNSRecord.parse(await r.handle(q2.pack()))
    assert (a1.header.id, a2.header.id) == (q1.header.id, q2.header.id) and r.cache_hits == 1
    assert sorted(str(a.rdata) for a in a2.rr) == ["10.0.0.1", "10.0.0.2"]
    current["view"] = ServiceView.build([ep(7)], "fleet.local")
    a3 = DNSRecord.parse(await r.handle(q1.pack()))
    assert [str(a.rdata) for a in a3.rr] == ["10.0.0.7"]


@pytest.mark.parametrize("runtime,flag", [("launcher", "--bind=/run/fleet/resolv.conf:/etc/resolv.conf:ro"),
                                          ("nspawn", "--bind-ro=/run/fleet/resolv.conf:/etc/resolv.conf")])
def test_rendered_containers_resolve_through_fleetd(runtime, flag):
    from fleetd.container.render import ImageInfo, NodeFacts, render_unit

    image = ImageInfo("busybox", "sha256:" + "ab" * 32, "/r")
    body = f"[X-Container]\nImage=busybox\nCommand=httpd -f\nRuntime={runtime}\n\n[X-Service]\nName=web\nPort=80\n"
    facts = NodeFacts(resolv_conf="/run/fleet/resolv.conf")
    text = render_unit("web.service", UnitFile.parse(body), facts, image)
    assert flag in text and "[X-Service]" in text  # systemd ignores X- sections
    assert flag not in render_unit("web.service", UnitFile.parse(body), NodeFacts(), image)
    isolated = UnitFile.parse(body.replace("Command=", "Network=none\nCommand="))
    assert flag not in render_unit("web.service", isolated, facts, image)
    assert NodeFacts.from_json(facts.to_json()) == facts and "resolvConf" not in NodeFacts().to_json()
