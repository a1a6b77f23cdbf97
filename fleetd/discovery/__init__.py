"""Service discovery: declared services ([X-Service]) published by agents, read back as a
view (view.py, pure), served over DNS (dns.py), the API and fleet-confd (confd.py)."""
