"""Who may act in the console, and whether a POST really comes from its own pages.

An action needs one of the token file's tokens: as a bearer header (scripts),
or once at /login, which sets a session cookie (HttpOnly, SameSite=Strict) for
a browser. A cookie is sent by the browser whoever made the page that posts,
so a session's POST must also carry the session's CSRF token (a hidden field
of every form) and come from the console's own origin (Origin, else Referer).
Sessions live in the master's memory: at most MAX_SESSIONS, for SESSION_TTL.
"""

import collections
import hmac
import secrets
import time
from http.cookies import CookieError, SimpleCookie
from typing import Optional

from wqd.config import console_tokens as token_file

COOKIE = "wqd_console"
MAX_SESSIONS = 64
SESSION_TTL = 12 * 3600.0


class Session:
    def __init__(self, name: str, now: float):
        self.id = secrets.token_urlsafe(32)
        self.csrf = secrets.token_urlsafe(32)
        self.name = name
        self.expires = now + SESSION_TTL


class Refused(Exception):
    """An action not allowed; its text says why, for the page and the audit log."""


class Auth:
    def __init__(self, token_path: Optional[str]):
        self.tokens = token_file.load(token_path) if token_path else {}
        self._sessions = collections.OrderedDict()  # id -> Session, oldest first

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def reload(self, token_path: Optional[str]) -> None:
        """A reload's token file: sessions of tokens it no longer holds end."""
        self.tokens = token_file.load(token_path) if token_path else {}
        names = set(self.tokens.values())
        for session_id in [sid for sid, session in self._sessions.items() if session.name not in names]:
            del self._sessions[session_id]

    def log_in(self, request, offered: str) -> Session:
        """A new session for the token ``offered`` at /login; raise Refused."""
        self._check_enabled()
        self._check_origin(request, required=True)
        name = token_file.who(self.tokens, offered)
        if name is None:
            raise Refused("that token is not in the console's token file")
        now = time.monotonic()
        self._expire(now)
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        session = Session(name, now)
        self._sessions[session.id] = session
        return session

    def log_out(self, request) -> None:
        session = self.session(request)
        if session is not None and self._csrf_matches(request, session):
            self._sessions.pop(session.id, None)

    def session(self, request) -> Optional[Session]:
        """The request's live session, from its cookie; None without one."""
        try:
            cookie = SimpleCookie(request.headers.get("Cookie", ""))
        except CookieError:
            return None
        morsel = cookie.get(COOKIE)
        session = self._sessions.get(morsel.value) if morsel else None
        if session is None or session.expires < time.monotonic():
            return None
        return session

    def authorize(self, request) -> str:
        """The name of whoever sends this action POST; raise Refused saying why not."""
        self._check_enabled()
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            self._check_origin(request, required=False)  # a script sends none; a browser's must be ours
            name = token_file.who(self.tokens, header[7:].strip())
            if name is None:
                raise Refused("the bearer token is not in the console's token file")
            return name
        session = self.session(request)
        if session is None:
            raise Refused("log in first (or send the token as Authorization: Bearer)")
        self._check_origin(request, required=True)
        if not self._csrf_matches(request, session):
            raise Refused("the form's CSRF token does not match this session (reload the page and try again)")
        return session.name

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise Refused("the console is read-only: actions need console.token_file in the configuration")

    def _check_origin(self, request, required: bool) -> None:
        """The POST comes from a page of this host: Origin, else Referer, names it."""
        host = request.headers.get("Host", "")
        origin = request.headers.get("Origin")
        if origin is not None:
            if origin not in (f"http://{host}", f"https://{host}"):
                raise Refused("cross-site request: its Origin is not this console's")
            return
        referer = request.headers.get("Referer")
        if referer is not None:
            if not any(referer.startswith(f"{scheme}://{host}/") for scheme in ("http", "https")):
                raise Refused("cross-site request: its Referer is not this console's")
            return
        if required:
            raise Refused("a browser's action must say where it comes from (no Origin or Referer header)")

    @staticmethod
    def _csrf_matches(request, session: Session) -> bool:
        offered = request.form().get("csrf", [""])[0]
        return hmac.compare_digest(offered.encode("utf-8", "replace"), session.csrf.encode())

    def _expire(self, now: float) -> None:
        for session_id in [sid for sid, session in self._sessions.items() if session.expires < now]:
            del self._sessions[session_id]
