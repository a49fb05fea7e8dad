"""Plain-language notes on filters that removed nothing or everything."""

from __future__ import annotations


def _name(category: str) -> str:
    return category.replace("-", " ")


def filter_notes(doc: dict) -> list[str]:
    """One sentence per --require/--exclude/--min-level that removed no item or every item, and
    one when the query's sound was not looked for inside long recordings.

    `doc` is a results document (present.document.results_document)."""
    effects = doc.get("filter_effects") or {}
    presence = (doc.get("query") or {}).get("presence") or {}
    searched = effects.get("others", doc.get("items_searched", 0))
    notes: list[str] = []
    skipped = doc.get("inside_skipped_hours")
    if skipped is not None:
        notes.append(
            f"the query's own sound was not looked for inside the store's {skipped:.1f} hours of long "
            "recordings (more than a query scans by default): --inside does, at about 0.3 s an hour"
        )
    for cat, removed in (effects.get("require") or {}).items():
        has = presence.get(cat, 0.0) >= 0.5
        if removed >= searched > 0:
            why = (
                f"the model finds no {_name(cat)} in the query, so no result can share it"
                if not has
                else f"the model hears {_name(cat)} in the query but in no stored item"
            )
            notes.append(f"--require {cat} removed every result: {why}")
        elif removed == 0:
            notes.append(f"--require {cat} removed nothing: every stored item shares {_name(cat)} with the query")
    for cat, removed in (effects.get("exclude") or {}).items():
        has = presence.get(cat, 0.0) >= 0.5
        if removed == 0:
            why = (
                f"the model finds no {_name(cat)} in the query, and --exclude only drops results sharing it with the query"
                if not has
                else f"the model hears {_name(cat)} in the query but in no stored item"
            )
            notes.append(f"--exclude {cat} removed nothing: {why}")
        elif removed >= searched > 0:
            notes.append(f"--exclude {cat} removed every result: every stored item shares {_name(cat)} with the query")
    level = effects.get("min_level")
    if level is not None and searched > 0 and level >= searched:
        m = (doc.get("filters") or {}).get("min_level")
        notes.append(f"--min-level {m} removed every result: no stored item agrees with the query on {m} categories")
    return notes
