"""FHIR R4 JSON as otrules reads it: lines into resources, references, times.

No mapping here (that is `mapping`): only the shapes every resource shares, so
the mapping reads like the table in contracts.md §7.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from otrules.schemas import EventRejected
from otrules.schemas._errors import show_value
from otrules.schemas.events import check_repeated_keys

# Bundle types whose entries are resources to read. A Subscription notification (R4 backport IG)
# is a `history` Bundle whose first entry is a Parameters or SubscriptionStatus: skipped by type.
BUNDLE_TYPES = ("collection", "transaction", "batch", "searchset", "history", "transaction-response",
                "batch-response", "document", "message", "subscription-notification")
MAX_ENTRIES = 10_000
"""Entries of one Bundle line: a Kafka record is at most a megabyte, a file line is not bounded."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One resource of a line and where it is: `at` is "" for a bare resource, else `Bundle.entry[i]`."""

    resource: dict[str, Any]
    at: str
    full_url: str | None = None
    index: int | None = None  # the entry's index in its Bundle
    bundle_id: str | None = None
    bundle_type: str | None = None
    repeated: str | None = None  # a key the entry repeats in one object: it is refused alone (the reason quotes it)
    type: str = field(init=False)  # resourceType, read once (the mapping asks for it often)

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", str(self.resource.get("resourceType")))

    def path(self, element: str) -> str:
        """The FHIR path of an element of this resource, e.g. `Observation.valueQuantity.value`."""
        return f"{self.type}.{element}" if element else self.type

    def where(self) -> str:
        """How a reason names the resource: its place in the line and its id."""
        rid = self.resource.get("id")
        name = f"{self.type}/{rid}" if isinstance(rid, str) else self.type
        return f"{self.at} ({name})" if self.at else name


def is_fhir(raw: bytes) -> bool:
    """`auto`: a JSON object with a top-level `resourceType` (the text test is only the fast no)."""
    if b'"resourceType"' not in raw:
        return False
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and "resourceType" in doc


def entries(raw: bytes) -> list[Entry]:
    """The resources of one line: the resource itself, or each entry's resource of a Bundle.
    Raises `EventRejected` for a line that is not a FHIR resource at all."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventRejected(f"not valid JSON: {exc}", "not valid JSON") from None
    if not isinstance(doc, dict):
        raise EventRejected(f"(resource): expected a JSON object (got {show_value(doc)})", "(resource)")
    repeated: dict[int, str] = {}
    if _written_keys(doc) != raw.count(b'":'):  # a key repeated (or spaced `" :`): the exact look
        repeated = _repeated_by_entry(raw)
    kind = doc.get("resourceType")
    if not isinstance(kind, str) or not kind:
        raise EventRejected(f"resourceType: required for FHIR input (got {show_value(kind)})", "resourceType")
    if kind != "Bundle":
        return [Entry(doc, "")]
    btype = doc.get("type")
    if btype not in BUNDLE_TYPES:
        raise EventRejected(f"Bundle.type: {show_value(btype)} is not a Bundle type otrules reads "
                            f"({', '.join(BUNDLE_TYPES[:6])}, ...)", "Bundle.type")
    items = doc.get("entry", [])
    if not isinstance(items, list):
        raise EventRejected(f"Bundle.entry: expected a list (got {show_value(items)})", "Bundle.entry")
    if len(items) > MAX_ENTRIES:
        raise EventRejected(f"Bundle.entry: {len(items)} entries, over the {MAX_ENTRIES} limit", "Bundle.entry")
    bid = doc.get("id")
    bundle_id = bid if isinstance(bid, str) else None
    out = []
    for i, item in enumerate(items):
        at = f"Bundle.entry[{i}]"
        if not isinstance(item, dict):
            raise EventRejected(f"{at}: expected a JSON object (got {show_value(item)})", "Bundle.entry")
        resource = item.get("resource")
        if resource is None:  # a history DELETE, a batch response without the resource: nothing to read
            resource = {"resourceType": "(no resource)"}
        if not isinstance(resource, dict):
            raise EventRejected(f"{at}.resource: expected a JSON object (got {show_value(resource)})",
                                "Bundle.entry.resource")
        url = item.get("fullUrl")
        out.append(Entry(resource, at, url if isinstance(url, str) else None, i, bundle_id, btype, repeated.get(i)))
    return out


def _repeated_by_entry(raw: bytes) -> dict[int, str]:
    """The entries of a Bundle that repeat a key in one object (entry index -> the key), so each is
    refused alone; a repeat anywhere else (the Bundle's own keys, a bare resource) refuses the line
    (`EventRejected`, as check_repeated_keys). Only read when the key count says a key may repeat."""
    marked: dict[int, str] = {}  # id of an object that repeats a key -> the key
    keep: list[dict[str, Any]] = []  # the marked objects, alive so their ids stay theirs

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            marked[id(obj)] = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            keep.append(obj)
        return obj

    doc = json.loads(raw, object_pairs_hook=hook)
    if not marked:
        return {}
    items = doc.get("entry") if doc.get("resourceType") == "Bundle" and id(doc) not in marked else None
    out: dict[int, str] = {}
    found = 0
    for i, item in enumerate(items if isinstance(items, list) else ()):
        todo = [item]
        while todo:
            node = todo.pop()
            if isinstance(node, dict):
                if id(node) in marked:
                    out.setdefault(i, marked[id(node)])
                    found += 1
                todo.extend(node.values())
            elif isinstance(node, list):
                todo.extend(node)
    if found != len(marked):  # a repeat outside the entries
        check_repeated_keys(raw)
    return out


def contained(entry: Entry) -> list[Entry]:
    """The contained resources of an entry that have an id, as entries of their own: each is known by
    `<container id>.<contained id>` (or the container's fullUrl and `#id`), inherits the container's
    subject when it has none, and is found by `#<id>` from the container (`local_refs`)."""
    items = entry.resource.get("contained")
    rid = identity(entry)
    if not isinstance(items, list) or rid is None:
        return []
    out = []
    for j, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            continue
        resource = dict(item)
        resource["id"] = f"{rid}.{item['id']}" if not rid.startswith("urn:") else f"c{j}.{item['id']}"
        for element in ("subject", "patient"):
            if element in entry.resource and element not in resource and resource.get("resourceType") in (
                    "Goal", "Observation", "ServiceRequest", "CarePlan", "Encounter", "EpisodeOfCare"):
                resource[element if resource.get("resourceType") != "EpisodeOfCare" else "patient"] = \
                    entry.resource[element]
        at = f"{entry.at}.resource.contained[{j}]" if entry.at else f"{entry.type}.contained[{j}]"
        out.append(Entry(resource, at, None, entry.index, entry.bundle_id, entry.bundle_type))
    return out


def local_refs(entry: Entry) -> dict[str, tuple[str, str]]:
    """`#<id>` -> (type, id as `contained` names it) for the contained resources of an entry."""
    out: dict[str, tuple[str, str]] = {}
    for item in contained(entry):
        cid = item.resource["id"].rsplit(".", 1)[-1]
        out[f"#{cid}"] = (item.type, item.resource["id"])
    return out


def _written_keys(doc: Any) -> int:
    """`":` in the document as orjson writes it back: the count of the raw line too unless a key was
    repeated (the parsed object kept one of them) or the line spaces its colons. orjson counts in C;
    a document nested deeper than it writes is counted in Python."""
    try:
        return orjson.dumps(doc).count(b'":')
    except orjson.JSONEncodeError:
        return _keys(doc)


def _keys(doc: Any) -> int:
    """How many object keys a parsed JSON document holds (without recursion: any depth is safe)."""
    count, todo = 0, [doc]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            count += len(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return count


# ---------------------------------------------------------------- references

_REFERENCE = re.compile(r"^(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def reference(value: Any, bundle: dict[str, tuple[str, str]] | None = None) -> tuple[str, str] | None:
    """(type, id) a Reference names: `Patient/p1`, an absolute URL ending in it, a versioned one, or
    a `urn:uuid:` fullUrl of another entry of the same Bundle. None when it names nothing readable."""
    if not isinstance(value, dict):
        return None
    ref = value.get("reference")
    if not isinstance(ref, str):
        return None
    if bundle is not None and ref in bundle:
        return bundle[ref]
    found = _REFERENCE.match(ref)
    return (found.group(1), found.group(2)) if found else None


def identity(entry: Entry) -> str | None:
    """A resource's id: `id`, else its `urn:uuid:` fullUrl (a transaction may leave ids to the server)."""
    rid = entry.resource.get("id")
    if isinstance(rid, str) and rid:
        return rid
    if entry.full_url and entry.full_url.startswith("urn:"):
        return entry.full_url
    return None


def version_id(resource: dict[str, Any]) -> str | None:
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return version if isinstance(version, str) and version else None


def last_updated(resource: dict[str, Any]) -> str | None:
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def codings(concept: Any) -> list[tuple[str | None, str | None]]:
    """(system, code) of each coding of a CodeableConcept (or of a list of them)."""
    concepts = concept if isinstance(concept, list) else [concept]
    out = []
    for c in concepts:
        items = c.get("coding") if isinstance(c, dict) else None
        for coding in items if isinstance(items, list) else ():
            if isinstance(coding, dict):
                system, code = coding.get("system"), coding.get("code")
                out.append((system if isinstance(system, str) else None, code if isinstance(code, str) else None))
    return out


# ---------------------------------------------------------------- times

_FULL_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class PartialTime(ValueError):
    """A FHIR date or dateTime with only a year or a month: otrules needs the day."""


def event_time(value: str) -> str:
    """An RFC 3339 date-time for a FHIR dateTime or instant; a date alone is midnight UTC, which
    keeps its calendar date. Raises `PartialTime` for `2026` or `2026-01`."""
    if _FULL_DATE.match(value):
        return f"{value}T00:00:00Z"
    if "T" not in value:
        raise PartialTime(value)
    return value


def date_of(value: str) -> str:
    """The calendar date (YYYY-MM-DD) of a FHIR date or dateTime, in its own offset."""
    if len(value) < 10 or not _FULL_DATE.match(value[:10]):
        raise PartialTime(value)
    return value[:10]


def add_days(day: str, days: int) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()
