"""Item-based k-nearest neighbours, in plain Python: two items are similar when the same
users liked both (cosine similarity of their user sets); a user's candidates are scored by
their summed similarity to the items in the user's history, using each history item's
`neighbors` most similar items only. A user with no usable history gets the most-liked items.

Online learning: `update` adds each new (user, item) like to the co-occurrence counts at
once, so the next request sees it. Snapshots hold the counts themselves (`marshal`, the
standard library's fastest codec for dicts and lists), so that a new serving instance loads
in a fraction of a second instead of recounting every like.

Written from `wit/strategy.wit` and docs/plugins.md, starting from
`recohost plugin new python-itemknn --lang python`: this file replaces the generated model;
`app.py` passes the request's history.
"""

import heapq
import json
import marshal
import math
from dataclasses import dataclass
from enum import Enum

DESCRIPTION = "Item-based kNN in Python: cosine similarity of co-liked items (example plugin)"

# First bytes of a snapshot, with the format's version: anything else is refused.
SNAPSHOT_MAGIC = b"pyiknn01"


class Kind(Enum):
    RATE = 0
    CLICK = 1
    VIEW = 2
    PURCHASE = 3


@dataclass(frozen=True)
class Event:
    user: int
    item: int
    kind: Kind
    value: float
    timestamp: int


class InvalidInput(ValueError):
    """Input that breaks the contract; the host is told `invalid-input` with this message."""


@dataclass(frozen=True)
class Settings:
    # Ratings below this are not counted as liking the item.
    positive_rating: float = 3.5
    # Neighbours of each history item that may contribute to a score.
    neighbors: int = 50

    @staticmethod
    def from_json(text: str) -> "Settings":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidInput(f"invalid config: {error}") from None
        if not isinstance(values, dict):
            raise InvalidInput("invalid config: expected a JSON object")
        known = {"positive_rating", "neighbors"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInput(f"invalid config: unknown key {unknown[0]!r}, expected one of {sorted(known)}")
        rating = values.get("positive_rating", Settings.positive_rating)
        if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not math.isfinite(rating):
            raise InvalidInput("invalid config: positive_rating must be a number")
        neighbors = values.get("neighbors", Settings.neighbors)
        if isinstance(neighbors, bool) or not isinstance(neighbors, int) or neighbors < 1:
            raise InvalidInput("invalid config: neighbors must be a whole number, at least 1")
        return Settings(positive_rating=float(rating), neighbors=neighbors)


class Model:
    def __init__(self, settings: Settings, catalog_len: int):
        self.settings = settings
        self.catalog_len = catalog_len
        # Items each user liked.
        self.liked: dict[int, set[int]] = {}
        # Users who liked each item.
        self.item_users = [0] * catalog_len
        # Co-occurrence counts of item pairs (both directions).
        self.together: list[dict[int, int]] = [{} for _ in range(catalog_len)]

    def likes(self, event: Event) -> bool:
        return event.kind != Kind.RATE or event.value >= self.settings.positive_rating

    def train(self, events: list[Event]) -> int:
        self.__init__(self.settings, self.catalog_len)
        return self.update(events)

    def update(self, events: list[Event]) -> int:
        """Adds the new likes; refuses (and learns nothing from) a batch with an unknown item."""
        for event in events:
            if not 0 <= event.item < self.catalog_len:
                raise InvalidInput(
                    f"item index {event.item} is outside the catalog of {self.catalog_len} items"
                )
        for event in events:
            if self.likes(event):
                self.add(event.user, event.item)
        return len(events)

    def add(self, user: int, item: int) -> None:
        liked = self.liked.setdefault(user, set())
        if item in liked:
            return
        self.item_users[item] += 1
        row = self.together[item]
        for other in liked:
            row[other] = row.get(other, 0) + 1
            other_row = self.together[other]
            other_row[item] = other_row.get(item, 0) + 1
        liked.add(item)

    def similarity(self, a: int, b: int, together: int) -> float:
        norm = math.sqrt(self.item_users[a] * self.item_users[b])
        return together / norm if norm > 0 else 0.0

    def recommend(self, history: list[int], count: int, exclude: list[int]) -> list[tuple[int, float]]:
        """Up to `count` items scored from `history` (items the user interacted with), none of
        `exclude`; best first, ties by the lower index."""
        scores: dict[int, float] = {}
        for item in sorted({i for i in history if 0 <= i < self.catalog_len}):
            neighbours = heapq.nsmallest(
                self.settings.neighbors,
                ((-self.similarity(item, other, n), other) for other, n in self.together[item].items()),
            )
            for negative, other in neighbours:
                scores[other] = scores.get(other, 0.0) - negative
        if not scores:
            # Cold start: popularity (how many users liked the item), as a small score.
            scores = {item: users * 1e-6 for item, users in enumerate(self.item_users)}
        excluded = set(exclude)
        return heapq.nsmallest(
            count,
            ((item, score) for item, score in scores.items() if item not in excluded),
            key=lambda pair: (-pair[1], pair[0]),
        )

    def save(self) -> bytes:
        liked = {user: sorted(items) for user, items in self.liked.items()}
        return SNAPSHOT_MAGIC + marshal.dumps((self.catalog_len, liked, self.item_users, self.together))

    def load(self, snapshot: bytes) -> None:
        """Restores a model made by `save` for the same catalog."""
        if not snapshot.startswith(SNAPSHOT_MAGIC):
            raise InvalidInput("not a snapshot of python-itemknn")
        try:
            catalog_len, liked, item_users, together = marshal.loads(snapshot[len(SNAPSHOT_MAGIC):])
            liked = {user: set(items) for user, items in liked.items()}
            sizes = (len(item_users), len(together))
        except (EOFError, ValueError, TypeError, AttributeError) as error:
            raise InvalidInput(f"a damaged snapshot: {error}") from None
        if catalog_len != self.catalog_len or sizes != (catalog_len, catalog_len):
            raise InvalidInput(f"the snapshot is for {catalog_len} items, the catalog has {self.catalog_len}")
        self.liked = liked
        self.item_users = item_users
        self.together = together
