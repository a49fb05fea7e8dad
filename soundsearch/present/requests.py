"""What a request to `soundsearch serve` asks for: the search parameters (Params, also written
back into links), numbers checked, and BadRequest for anything else."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from soundsearch.errors import SoundsearchError

MAX_K = 500


@dataclass
class Params:
    k: int = 10
    require: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_level: int | None = None
    mode: str | None = None
    include_self: bool = False
    # The query region (seconds) and the times as typed (m:ss or seconds), kept for the URL.
    start: float | None = None
    end: float | None = None
    start_text: str = ""
    end_text: str = ""

    @property
    def region(self) -> bool:
        return self.start is not None or self.end is not None

    def query_string(self, region: bool = True) -> list[tuple[str, str]]:
        """The filters as URL parameters; region=False leaves the query region out (a
        "more like this" link starts a new query)."""
        q = [("k", str(self.k))]
        if region and self.start_text:
            q.append(("start", self.start_text))
        if region and self.end_text:
            q.append(("end", self.end_text))
        q += [("require", c) for c in self.require] + [("exclude", c) for c in self.exclude]
        if self.min_level is not None:
            q.append(("min_level", str(self.min_level)))
        if self.mode:
            q.append(("mode", self.mode))
        if self.include_self:
            q.append(("include_self", "1"))
        return q


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_params(values) -> Params:
    """Params from a query string or a form; BadRequest naming what is wrong."""

    def integer(name: str, default, lo: int, hi: int):
        raw = (values.get(name) or "").strip()
        if not raw:
            return default
        try:
            v = int(raw)
        except ValueError:
            raise BadRequest(f"{name} must be a whole number, not {raw!r}") from None
        if not lo <= v <= hi:
            raise BadRequest(f"{name} must be between {lo} and {hi}")
        return v

    def time(name: str, label: str) -> tuple[float | None, str]:
        from soundsearch.audio.items import parse_time

        raw = (values.get(name) or "").strip()
        if not raw:
            return None, ""
        try:
            return parse_time(raw, label), raw
        except SoundsearchError as exc:
            raise BadRequest(str(exc)) from None

    start, start_text = time("start", "from")
    end, end_text = time("end", "to")
    if start is not None and end is not None and not end > start:
        raise BadRequest(f"the query region must end after it starts: from {start_text} to {end_text}")
    mode = (values.get("mode") or "").strip() or None
    return Params(
        start=start, end=end, start_text=start_text, end_text=end_text,
        k=integer("k", 10, 1, MAX_K),
        require=tuple(v for v in values.getlist("require") if v),
        exclude=tuple(v for v in values.getlist("exclude") if v),
        min_level=integer("min_level", None, 0, 1000),
        mode=mode,
        include_self=(values.get("include_self") or "") in ("1", "on", "true"),
    )


def float_param(request: Request, name: str) -> float | None:
    """A number parameter in 0..1e7, None when absent."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None
    if not 0 <= v < 1e7:
        raise BadRequest(f"{name} out of range")
    return v
