"""What survives STARTTLS and a turn, decided in the engine and tested with bytes.

``SMTPPeer`` hands a connection from one role to the next with
``SessionState.after_turn`` and nothing else, so these tests are the rule:
TLS belongs to the connection and stays; a HELO name and an AUTH identity
belong to the receiver role that learnt them and go.
"""

from __future__ import annotations

from smtppeer.engine import events as ev
from smtppeer.engine.replies import reply
from smtppeer.engine.sender import TLS_REQUIRED, ClientSecurity, Sender
from smtppeer.engine.session import SessionState

from .test_engine_trust_receiver import AUTH_ALICE, authed, peer, trust_extensions


def test_starttls_forgets_everything_learnt_in_clear():
    state = SessionState(helo_name="c.example", esmtp=True, authenticated="alice")
    assert state.after_starttls() == SessionState(secure=True)


def test_a_turn_keeps_tls_and_drops_greeting_and_identity():
    state = SessionState(secure=True, helo_name="c.example", esmtp=True, authenticated="alice")
    assert state.after_turn() == SessionState(secure=True, turned=True)
    assert SessionState().after_turn() == SessionState(turned=True)


def test_starttls_after_a_turn_still_knows_the_connection_turned():
    assert SessionState(turned=True).after_starttls() == SessionState(secure=True, turned=True)


def test_receiver_state_follows_the_session():
    p = authed()  # EHLO and AUTH PLAIN as alice, under TLS
    assert p.rx.state == SessionState(
        secure=True, helo_name="client.example", esmtp=True, authenticated="alice"
    )


def test_turn_hand_over_receiver_to_sender_with_bytes():
    """An authenticated receiver under TLS accepts TURN: the new sender on the same
    connection starts from ``after_turn`` — secure, so it does not STARTTLS again
    even though its policy requires TLS, and it owes the other side no identity."""
    p = authed(answer=lambda event: reply(250, "2.0.0", "OK, turning around"))
    assert [r.code for r in p.send(b"TURN\r\n")] == [250]
    assert any(isinstance(e, ev.TurnRequested) for e in p.take_events())
    handed = p.rx.state.after_turn()
    assert (handed.secure, handed.authenticated, handed.helo_name) == (True, None, None)

    sender = Sender("mx.example", security=ClientSecurity(tls=TLS_REQUIRED), secure=handed.secure)
    sender.receive_data(b"220 client.example ESMTP\r\n")
    assert sender.data_to_send() == b"EHLO mx.example\r\n"
    sender.receive_data(b"250-client.example\r\n250-STARTTLS\r\n250 PIPELINING\r\n")
    sender.finish("QUIT")
    assert sender.data_to_send() == b"QUIT\r\n"  # no STARTTLS: the connection is already secure


def test_turn_hand_over_sender_to_receiver_with_bytes():
    """We sent TURN and it was accepted: the new receiver is secure but has no
    identity for its client, so PLAIN is offered and TURN needs a login first."""
    handed = SessionState(secure=True).after_turn()
    p = peer(extensions=trust_extensions(starttls=False), secure=handed.secure, answer=None)
    [greeting] = p.greeting
    [ehlo] = p.send(b"EHLO provider.example\r\n")
    assert greeting.code == 220
    [auth] = [line.split() for line in ehlo.lines if line.startswith("AUTH ")]
    assert "PLAIN" in auth  # offered: the connection is secure
    assert p.rx.state.authenticated is None
    assert [r.code for r in p.send(AUTH_ALICE)] == [235]
    assert p.rx.state == SessionState(
        secure=True, helo_name="provider.example", esmtp=True, authenticated="alice"
    )
