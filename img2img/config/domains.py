"""Domains and directions: a pipeline's image domains are named (``a``, ``b``, ``day``, ...), and a
direction ``<from>2<to>`` translates images of one domain into another (``a2b``, ``day2night``).

Names are identifiers without the digit 2, so that every direction splits one way only.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from img2img.errors import Img2ImgError, did_you_mean

DOMAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z013-9_]*$")
DOMAIN_RULE = "a domain name is an identifier (letters, digits, _) without the digit 2, which separates directions"


def check_domain_name(name: object) -> str:
    """`name` if it can name a domain; ValueError saying why not."""
    if not isinstance(name, str) or not DOMAIN_NAME.match(name):
        raise ValueError(f"{name!r}: {DOMAIN_RULE}")
    return name


def split_direction(direction: str) -> tuple[str, str]:
    """``"a2b"`` -> ``("a", "b")``: the source and the target domain of a direction."""
    source, sep, target = str(direction).partition("2")
    if not sep or not source or not target or "2" in target:
        raise ValueError(f"{direction!r} is not a direction: write <from>2<to>, e.g. a2b")
    return source, target


def domains_of(directions: Iterable[str]) -> tuple[str, ...]:
    """The domains that `directions` mention, in order of first appearance."""
    seen: dict[str, None] = {}
    for direction in directions:
        for domain in split_direction(direction):
            seen.setdefault(domain, None)
    return tuple(seen)


def all_directions(domains: Iterable[str]) -> tuple[str, ...]:
    """Every ``<from>2<to>`` between two different domains: a2b, a2c, b2a, b2c, c2a, c2b for a, b, c."""
    names = list(domains)
    return tuple(f"{s}2{t}" for s in names for t in names if s != t)


def direction_problem(direction: str, directions: Iterable[str], what: str) -> str | None:
    """None when `direction` is one of `directions`; else a message naming them, with a did-you-mean."""
    known = list(directions)
    if direction in known:
        return None
    if not known:
        return f"{what} translates no direction"
    hint = did_you_mean(direction, known)
    return f"{what} translates {', '.join(known)}, not {direction}; " + (hint or f"use --direction {known[0]}")


def check_direction(direction: str, directions: Iterable[str], what: str) -> str:
    """`direction`, if one of `directions`; else an `Img2ImgError` listing them (with a did-you-mean)."""
    problem = direction_problem(direction, directions, what)
    if problem:
        raise Img2ImgError(problem)
    return direction
