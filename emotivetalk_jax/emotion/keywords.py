"""The eight emotion keywords of EmotiveTalk (6.3), their word forms and descriptions.

`KEYWORDS` fixes the order every table here uses (codebook rows, speech-head classes).
`parse_keyword` accepts a keyword or one of its word forms ("fear", "happiness", ...);
`keyword_from_synonyms` is the offline fallback for free text when no sentence-embedding
model is installed: it looks for keyword forms and common synonyms as whole words.
"""

from __future__ import annotations

import re

KEYWORDS: tuple[str, ...] = ("happy", "angry", "sad", "surprised", "fearful", "disgusted", "worried", "neutral")


class EmotionError(ValueError):
    """An emotion source that cannot be used; the message is one line and says why."""


# Forms that mean exactly the keyword (the paper itself writes "fear" once).
_FORMS: dict[str, tuple[str, ...]] = {
    "happy": ("happiness", "joy", "joyful"),
    "angry": ("anger", "angrily"),
    "sad": ("sadness", "sadly"),
    "surprised": ("surprise", "surprising"),
    "fearful": ("fear", "afraid", "scared"),
    "disgusted": ("disgust", "disgusting"),
    "worried": ("worry", "worrying", "anxious", "anxiety"),
    "neutral": ("none", "calm", "normal", "plain", "expressionless"),
}

# Whole-word synonyms for the offline fallback (no embedding model installed).
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "happy": ("glad", "cheerful", "delighted", "thrilled", "elated", "smiling", "smile", "laughing", "laugh",
              "excited", "pleased", "content", "ecstatic", "overjoyed", "jolly", "merry", "grin", "grinning"),
    "angry": ("furious", "mad", "rage", "raging", "irate", "annoyed", "irritated", "livid", "outraged", "enraged",
              "frustrated", "hostile", "fuming", "cross"),
    "sad": ("unhappy", "sorrow", "sorrowful", "grief", "grieving", "depressed", "gloomy", "miserable", "tears",
            "crying", "cry", "weeping", "heartbroken", "melancholy", "downcast", "upset", "down", "blue"),
    "surprised": ("astonished", "amazed", "shocked", "stunned", "startled", "astounded", "wow", "unexpected"),
    "fearful": ("frightened", "terrified", "panicked", "panic", "horrified", "petrified", "dread", "fright",
                "terror", "spooked"),
    "disgusted": ("revolted", "repulsed", "grossed", "gross", "nauseated", "sickened", "yuck", "repelled"),
    "worried": ("nervous", "concerned", "uneasy", "apprehensive", "troubled", "tense", "stressed", "fretful",
                "doubtful", "uncertain"),
    "neutral": ("relaxed", "composed", "serene", "indifferent", "blank", "unemotional", "ordinary", "default"),
}

# Short descriptions embedded once per keyword; a text's keyword is the nearest by cosine.
DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "happy": ("happy", "a happy, joyful, smiling face", "cheerful, delighted, thrilled and excited",
              "laughing with joy", "celebrating good news"),
    "angry": ("angry", "an angry, furious face", "mad, irritated, outraged and full of rage",
              "shouting in anger"),
    "sad": ("sad", "a sad, sorrowful face", "unhappy, depressed, heartbroken and grieving",
            "crying, in tears"),
    "surprised": ("surprised", "a surprised, astonished face", "amazed, shocked, stunned and startled",
                  "gasping in surprise"),
    "fearful": ("fearful", "a frightened, scared face", "afraid, terrified, panicked and full of fear",
                "trembling with fear"),
    "disgusted": ("disgusted", "a disgusted, revolted face", "repulsed, grossed out, sickened and nauseated",
                  "wrinkling the nose in disgust"),
    "worried": ("worried", "a worried, anxious face", "nervous, concerned, uneasy and apprehensive",
                "fretting with worry"),
    "neutral": ("neutral", "a neutral, calm, expressionless face", "relaxed, composed, plain and without emotion",
                "speaking normally"),
}

_ALIASES: dict[str, str] = {k: k for k in KEYWORDS} | {f: k for k, forms in _FORMS.items() for f in forms}
_SYNONYM_INDEX: dict[str, str] = _ALIASES | {s: k for k, syns in _SYNONYMS.items() for s in syns}
_WORD = re.compile(r"[a-z]+")


def unknown_keyword_message(word: str) -> str:
    from emotivetalk_jax.validate import quote

    return f"unknown emotion {quote(word)}; use one of: {', '.join(KEYWORDS)}"


def normalize_keyword(word: str) -> str | None:
    """The keyword `word` names exactly (case, spaces and word forms ignored), else None."""
    return _ALIASES.get(" ".join(str(word).lower().split()))


def parse_keyword(word: str) -> str:
    """The keyword `word` names; `EmotionError` listing the eight for anything else."""
    kw = normalize_keyword(word)
    if kw is None:
        raise EmotionError(unknown_keyword_message(str(word).strip()))
    return kw


def keyword_index(word: str) -> int:
    return KEYWORDS.index(parse_keyword(word))


def keyword_from_synonyms(text: str) -> str | None:
    """The keyword whose forms / synonyms occur most often as whole words in `text`, else None.

    Ties go to the first occurrence. A preceding "not" / "no" / "never" is not understood.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, w in enumerate(_WORD.findall(str(text).lower())):
        kw = _SYNONYM_INDEX.get(w)
        if kw is not None:
            counts[kw] = counts.get(kw, 0) + 1
            first.setdefault(kw, i)
    if not counts:
        return None
    return max(counts, key=lambda k: (counts[k], -first[k]))
