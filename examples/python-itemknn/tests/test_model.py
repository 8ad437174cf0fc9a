"""The algorithm's tests, in plain Python: `./build.sh test`."""

import pytest

from model import Event, InvalidInput, Kind, Model, Settings


def click(user, item):
    return Event(user, item, Kind.CLICK, 1.0, 0)


def trained():
    """Users 0-2 like items 0 and 1 together; users 3-4 like 2 and 3 together."""
    model = Model(Settings(), 5)
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 2), (3, 3), (4, 2), (4, 3)]
    model.train([click(user, item) for user, item in pairs])
    return model


def test_recommends_the_neighbours_of_the_history():
    answer = trained().recommend([0], 2, [0])
    assert answer[0][0] == 1
    assert answer[0][1] == pytest.approx(1.0)


def test_a_user_without_history_gets_the_most_liked_items():
    items = [item for item, _ in trained().recommend([], 5, [])]
    assert items[:4] == [0, 1, 2, 3]


def test_never_returns_excluded_items_or_more_than_asked():
    answer = trained().recommend([0, 2], 10, [1, 3])
    assert all(item not in (1, 3) for item, _ in answer)
    assert len(trained().recommend([], 2, [])) == 2


def test_update_learns_a_new_pair_at_once():
    model = trained()
    assert all(item != 4 for item, _ in model.recommend([3], 5, [3]) if _ > 1e-3)
    model.update([click(9, 3), click(9, 4)])
    assert model.recommend([3], 1, [3])[0][0] in (2, 4)
    assert any(item == 4 and score > 0.1 for item, score in model.recommend([3], 5, [3]))


def test_low_ratings_are_not_likes():
    model = Model(Settings(positive_rating=4.0), 3)
    model.train([Event(0, 0, Kind.RATE, 5.0, 0), Event(0, 1, Kind.RATE, 2.0, 0)])
    assert model.item_users == [1, 0, 0]


def test_refuses_items_outside_the_catalog_and_learns_nothing():
    model = trained()
    before = model.save()
    with pytest.raises(InvalidInput):
        model.update([click(0, 4), click(0, 99)])
    assert model.save() == before


def test_a_loaded_snapshot_answers_identically_and_foreign_bytes_are_refused():
    model = trained()
    restored = Model(Settings(), 5)
    restored.load(model.save())
    for history in ([0], [2], [0, 3], []):
        assert restored.recommend(history, 5, []) == model.recommend(history, 5, [])
    # It keeps learning from where the snapshot was.
    restored.update([click(7, 4), click(7, 0)])
    model.update([click(7, 4), click(7, 0)])
    assert restored.save() == model.save()
    for foreign in (b"something else", model.save()[:20], b"pyiknn01" + b"\x00" * 8):
        with pytest.raises(InvalidInput):
            Model(Settings(), 5).load(foreign)
    with pytest.raises(InvalidInput):
        Model(Settings(), 6).load(model.save())


def test_settings_refuse_unknown_keys_and_bad_values():
    assert Settings.from_json("{}") == Settings()
    assert Settings.from_json('{"neighbors": 20}').neighbors == 20
    for bad in ('{"neighbours": 20}', '{"neighbors": 0}', '{"neighbors": 2.5}', '{"positive_rating": "x"}'):
        with pytest.raises(InvalidInput):
            Settings.from_json(bad)
