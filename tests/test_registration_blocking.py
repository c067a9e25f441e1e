"""register_fd may wait for the file system without holding anyone up (docs/contract.md,
"No blocking under the GIL").

An O_APPEND descriptor is reopened through /proc/self/fd, and that open can wait (NFS,
FUSE). To make it wait here: the descriptor is the write end of a FIFO opened O_APPEND
while a reader existed; the reader is gone, so reopening the FIFO for writing waits until
a reader comes. A helper process opens one when the test says so, or after a while if the
test cannot say so (it is stuck too: the GIL or the instance's lock is held). The test
passes only if, while register_fd waits, another thread ran Python and used the instance,
and then released the helper itself.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

from _support import call_with_timeout, register_path

HELPER = r"""
for i in $(seq 100); do [ -e "$1/go" ] && break; sleep 0.1; done
if [ -e "$1/go" ]; then echo released-by-the-test; else echo timed-out; fi > "$1/result"
exec : < "$1/fifo"
"""


def test_register_fd_waiting_on_a_reopen_holds_neither_the_gil_nor_the_instance(io, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    appending = os.open(fifo, os.O_WRONLY | os.O_APPEND)
    os.close(reader)  # reopening `appending` for writing now waits for a reader
    other = register_path(io, tmp_path / "other")
    helper = subprocess.Popen(["sh", "-c", HELPER, "helper", str(tmp_path)])
    registered: list = []
    waiting = threading.Thread(target=lambda: registered.append(io.register_fd(appending)))
    try:
        waiting.start()
        time.sleep(0.2)  # let it reach the open
        # Meanwhile this thread runs Python and calls the instance.
        assert waiting.is_alive(), "precondition: register_fd is waiting for a reader"
        token = io.submit_append(other, b"meanwhile")
        assert io.pending_count() >= 0
        (tmp_path / "go").touch()
        waiting.join(30)
        assert not waiting.is_alive() and registered, "register_fd never returned"
        assert (tmp_path / "result").read_text().strip() == "released-by-the-test"
        assert call_with_timeout(lambda: io.wait_for([token], timeout=10))[0].result == 9
    finally:
        (tmp_path / "go").touch()
        helper.wait(30)
        waiting.join(30)
        os.close(appending)
