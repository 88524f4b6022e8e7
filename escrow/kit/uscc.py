"""A unified social credit code (GB 32100-2015) is valid when its 18 characters, GB 11714 part and mod-31 check agree.

Layout (positions are 1-based, as the standard counts them):

* 1      registration authority code: ``1``-``9``, ``A`` (CMC reform and staffing office), ``N`` (agriculture),
         ``Y`` (other) — the original table plus its published amendments;
* 2      institution category code: any character of the code alphabet (the per-authority category lists keep
         being amended, so pinning them here would reject legitimate new codes);
* 3-8    administrative division code of the registering authority (GB/T 2260): six digits;
* 9-17   subject identifier, i.e. the organisation code under GB 11714-1997: eight body characters and a check
         character ``11 - sum(value * weight) % 11`` with weights 3,7,9,10,5,8,4,2, where 10 is written ``X``,
         11 is written ``0`` and letters count A=10 .. Z=35 (the full Latin alphabet, not the USCC alphabet);
* 18     check character over positions 1-17 (GB/T 17710 style, modulus 31).
"""

# The code alphabet: digits and capitals without I, O, Z, S, V (too easily confused with 1, 0, 2, 5, U);
# a character's value in the mod-31 check is its index here.
ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_VALUES = {character: value for value, character in enumerate(ALPHABET)}
# 3**i mod 31 for i = 0..16, as tabulated in the standard.
_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_AUTHORITY_CODES = frozenset("123456789ANY")
_ORGANISATION_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
LENGTH = 18


def _check_character(first17: str) -> str:
    total = sum(_VALUES[character] * weight for character, weight in zip(first17, _WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def _organisation_check_character(body: str) -> str:
    # GB 11714 predates the USCC alphabet and values letters by their place in the full Latin alphabet
    # (int(c, 36): A=10 .. Z=35); using the USCC values instead gives wrong answers for letters after H.
    total = sum(int(character, 36) * weight for character, weight in zip(body, _ORGANISATION_WEIGHTS, strict=True))
    check = 11 - total % 11
    return {10: "X", 11: "0"}.get(check, str(check))


def _normalise(code: str, length: int) -> str:
    if not isinstance(code, str):
        raise TypeError(f"unified social credit code must be a str, got {type(code).__name__}")
    stripped = code.strip()
    if len(stripped) != length:
        raise ValueError(f"unified social credit code must be {length} characters, got {len(stripped)}")
    # Upper-case ASCII only: str.upper() maps some non-ASCII letters onto ASCII ones (dotless i, U+0131, -> 'I') or onto
    # several characters ('ß' -> 'SS'), which would shift positions and blur the error message.
    normalised = "".join(character.upper() if character.isascii() else character for character in stripped)
    for position, character in enumerate(normalised, start=1):
        if character not in _VALUES:
            raise ValueError(
                f"character {character!r} at position {position} is not allowed in a unified social credit code "
                "(digits and capital letters except I, O, S, V, Z)"
            )
    return normalised


def _check_structure(code: str) -> None:
    if code[0] not in _AUTHORITY_CODES:
        raise ValueError(
            f"registration authority code {code[0]!r} at position 1 is not one of 1-9, A, N, Y (GB 32100-2015)"
        )
    division = code[2:8]
    if not division.isdigit():
        position = next(index for index, character in enumerate(division, start=3) if not character.isdigit())
        raise ValueError(
            f"administrative division code (positions 3-8) must be digits; character {code[position - 1]!r} "
            f"at position {position} is not"
        )
    expected = _organisation_check_character(code[8:16])
    if code[16] != expected:
        raise ValueError(
            f"organisation code (positions 9-17) fails its GB 11714 check: expected {expected!r} at position 17, "
            f"got {code[16]!r}"
        )


def validate_uscc(code: str) -> str:
    """Return ``code`` stripped and upper-cased, or raise ``ValueError`` naming the first rule it breaks."""
    normalised = _normalise(code, LENGTH)
    _check_structure(normalised)
    expected = _check_character(normalised[:17])
    if normalised[17] != expected:
        raise ValueError(f"wrong check character at position 18: expected {expected!r}, got {normalised[17]!r}")
    return normalised


def is_valid_uscc(code: object) -> bool:
    """True when ``code`` is a string that ``validate_uscc`` accepts."""
    if not isinstance(code, str):
        return False
    try:
        validate_uscc(code)
    except ValueError:
        return False
    return True


def with_check_character(first17: str) -> str:
    """Append the check character to 17 characters; raises ``ValueError`` if they break any structural rule."""
    normalised = _normalise(first17, LENGTH - 1)
    # Validating the result means fixtures built here are guaranteed to pass validate_uscc, so a test can never
    # quietly rely on a code the validator would reject (e.g. one with a bad organisation-code check).
    return validate_uscc(normalised + _check_character(normalised))
