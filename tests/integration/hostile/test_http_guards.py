"""The HTTP side against a real ``triage-node api`` process (issue 13, points 11, 13):

- a local caller cannot spoof the audited address with ``X-Forwarded-For`` unless a
  proxy is configured (``TRIAGE_FORWARDED_ALLOW_IPS``);
- failed sign-ins are throttled per user name *and* source address with a growing
  delay: an attacker guessing a user's password from one address does not lock the
  user out from another address.
"""

from __future__ import annotations

import time

from tests.integration.hostile.conftest import PASSWORD

SPOOFED = "203.0.113.77"


def test_a_local_caller_cannot_spoof_the_audited_address(api_node) -> None:
    node = api_node()
    forged = {"X-Forwarded-For": SPOOFED, "X-Forwarded-Proto": "https"}
    assert node.login("alice", "wrong password!", headers=forged).status == 401
    assert node.login("alice", PASSWORD, headers=forged).status == 303
    events = node.audit()
    assert [e[1] for e in events] == ["failure", "success"]
    assert {e[2] for e in events} == {"127.0.0.1"}, events


def test_a_configured_proxy_is_trusted(api_node) -> None:
    node = api_node(forwarded_allow_ips="127.0.0.1")
    forged = {"X-Forwarded-For": SPOOFED}
    assert node.login("alice", PASSWORD, headers=forged).status == 303
    # A caller that is not the configured proxy is still seen as itself.
    assert node.login("bob", PASSWORD, headers=forged, source="127.0.0.3").status == 303
    assert [e[2] for e in node.audit()] == [SPOOFED, "127.0.0.3"]


def test_guessing_from_one_address_does_not_lock_the_user_out_elsewhere(api_node) -> None:
    node = api_node(login_max_failures=3, login_backoff_seconds=1)
    attacker = "127.0.0.2"
    for _ in range(3):
        assert node.login("alice", "wrong password!", source=attacker).status == 401
    # The attacker is throttled, even with the right password, and told when to retry.
    throttled = node.login("alice", PASSWORD, source=attacker)
    assert throttled.status == 429
    first_delay = int(throttled.getheader("Retry-After"))
    assert 1 <= first_delay <= 2
    # Alice from her own address signs in at once.
    assert node.login("alice", PASSWORD, source="127.0.0.1").status == 303
    # After the delay the attacker may try again; one more failure doubles the delay.
    time.sleep(first_delay + 0.2)
    assert node.login("alice", "wrong password!", source=attacker).status == 401
    again = node.login("alice", "wrong password!", source=attacker)
    assert again.status == 429
    assert int(again.getheader("Retry-After")) >= 2 * first_delay - 1
    # Another user from the attacker's address is not throttled by alice's failures.
    assert node.login("bob", PASSWORD, source=attacker).status == 303
    outcomes = [(u, o, ip) for u, o, ip in node.audit()]
    assert ("alice", "success", "127.0.0.1") in outcomes
    assert outcomes.count(("alice", "rate_limited", attacker)) == 2
