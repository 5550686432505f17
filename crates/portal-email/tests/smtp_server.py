"""A real SMTP server for the notifier tests (aiosmtpd): stores each message in a maildir and
refuses recipients in one domain with 550, like a server with no such mailbox."""

import argparse
import mailbox
import signal
import sys
import threading

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, maildir, reject_domain):
        self.box = mailbox.Maildir(maildir, create=True)
        self.reject_domain = reject_domain.lower()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().endswith("@" + self.reject_domain):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.box.add(envelope.original_content)
        return "250 Message accepted for delivery"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--maildir", required=True)
    p.add_argument("--reject-domain", default="invalid.example")
    a = p.parse_args()
    controller = Controller(Handler(a.maildir, a.reject_domain), hostname="127.0.0.1", port=a.port)
    controller.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    controller.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
