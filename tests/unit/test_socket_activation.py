"""Which descriptor a `.socket` unit passed to serve, read from systemd's LISTEN_* variables (pure)."""

from __future__ import annotations

import pytest

from deployer.errors import ConfigError
from deployer.plan.socket_activation import activated_descriptors, receiver_descriptor

PID = 4242


@pytest.mark.parametrize(
    ("environ", "descriptors", "receiver"),
    [
        ({}, (), None),  # not started by a socket unit: serve binds [server] listen
        ({"LISTEN_FDS": "1"}, (), None),  # no LISTEN_PID: not addressed to anyone
        ({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, (), None),  # inherited from an activated parent
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "1"}, (3,), 3),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "deployer-serve.socket"}, (3,), 3),
    ],
)
def test_the_descriptors_systemd_passed_to_this_process(environ, descriptors, receiver):
    assert activated_descriptors(environ, PID) == descriptors
    assert receiver_descriptor(environ, PID) == receiver


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "2"}, "systemd passed 2 sockets (LISTEN_FDS): serve takes exactly one"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, "systemd passed 0 sockets (LISTEN_FDS): serve takes exactly one"),
        ({"LISTEN_PID": "4242"}, "LISTEN_PID names this process but LISTEN_FDS is not set"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "one"}, "LISTEN_FDS is 'one', not a number"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "-1"}, "LISTEN_FDS is '-1', not a number"),
        ({"LISTEN_PID": "x42", "LISTEN_FDS": "1"}, "LISTEN_PID is 'x42', not a number"),
        ({"LISTEN_PID": "４２４２", "LISTEN_FDS": "1"}, "LISTEN_PID is '４２４２', not a number"),
    ],
)
def test_variables_serve_cannot_take_stop_it_with_one_line(environ, message):
    with pytest.raises(ConfigError) as caught:
        receiver_descriptor(environ, PID)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
