"""evaluate(..., cache_dir=...): each attack's outcome saved as it finishes; a later call resumes at
the next attack and gives the same result as one uninterrupted run; anything that changed what an
outcome was computed on (weights, images, labels, attack settings, budgets) is attacked again."""

import pytest
import torch

from flowtriton.attacks import evaluate


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 10 * 10, 5))


def data(model, n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.interpolate(torch.rand(n, 1, 4, 4, generator=gen), size=(10, 10), mode="bilinear",
                                             align_corners=True)
    with torch.no_grad():
        labels = model(images).argmax(1)
    return images, labels


class Counting(torch.nn.Module):
    """Counts forward calls, so a test can tell an attack that ran from one read back."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def rows(result):
    return [(r.attack, r.budget, r.accuracy) for r in result.rows]


def test_cached_evaluation_equals_an_uninterrupted_one(tmp_path):
    model = Counting(tiny_model())
    images, labels = data(model)
    plain = evaluate(model, (images, labels), preset="fast")
    first = evaluate(model, (images, labels), preset="fast", cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["adef.pt", "flowpgd.pt", "rt.pt", "stadv.pt"]
    model.calls = 0
    second = evaluate(model, (images, labels), preset="fast", cache_dir=tmp_path / "cache")
    assert model.calls == 1  # the clean pass only: every attack read back
    for result in (first, second):
        assert rows(result) == rows(plain)
        assert result.to_dict(masks=True)["masks"] == plain.to_dict(masks=True)["masks"]
        assert result.masking == plain.masking
    assert second.seconds == first.seconds and set(first.seconds) == {"flowpgd", "adef", "stadv", "rt"}
    assert second.to_dict()["seconds"] == first.seconds


def test_an_interrupted_evaluation_resumes_at_the_next_attack(tmp_path):
    model = Counting(tiny_model())
    images, labels = data(model)
    done = []

    def stop_after_two(name, partial):
        done.append(name)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, (images, labels), preset="fast", cache_dir=tmp_path, on_attack_done=stop_after_two)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["adef.pt", "flowpgd.pt"]
    seen = []
    resumed = evaluate(model, (images, labels), preset="fast", cache_dir=tmp_path,
                       on_attack_done=lambda name, partial: seen.append((name, len(partial.rows))))
    assert [name for name, _ in seen] == ["flowpgd", "adef", "stadv", "rt"]  # read-back ones reported too
    assert rows(resumed) == rows(evaluate(model, (images, labels), preset="fast"))


@pytest.mark.parametrize("change", ["weights", "images", "labels", "settings", "budgets"])
def test_a_changed_input_is_attacked_again(tmp_path, change):
    model = Counting(tiny_model())
    images, labels = data(model)
    kwargs = {"preset": "fast", "attacks": ["flowpgd"]}
    evaluate(model, (images, labels), cache_dir=tmp_path, **kwargs)
    if change == "weights":
        with torch.no_grad():
            model.model[0].weight.add_(0.01)
    elif change == "images":
        images = images.flip(-1)
    elif change == "labels":
        labels = (labels + 1) % 5
    if change == "settings":
        from flowtriton.attacks import FlowPGD

        attacks = {"flowpgd": FlowPGD(model, eps=0.02, steps=3)}
        evaluate(model, (images, labels), attacks=attacks, cache_dir=tmp_path / "own")
        before = model.calls
        evaluate(model, (images, labels), attacks={"flowpgd": FlowPGD(model, eps=0.02, steps=4)},
                 cache_dir=tmp_path / "own")
        assert model.calls > before + 1
        return
    if change == "budgets":
        kwargs["budgets"] = {"linf": [0.01]}
    model.calls = 0
    evaluate(model, (images, labels), cache_dir=tmp_path, **kwargs)
    assert model.calls > 1, "the changed input should have been attacked again"


def test_an_unreadable_cache_file_is_attacked_again(tmp_path):
    model = Counting(tiny_model())
    images, labels = data(model)
    expected = evaluate(model, (images, labels), preset="fast", attacks=["flowpgd"], cache_dir=tmp_path)
    (tmp_path / "flowpgd.pt").write_bytes(b"not a checkpoint")
    model.calls = 0
    again = evaluate(model, (images, labels), preset="fast", attacks=["flowpgd"], cache_dir=tmp_path)
    assert model.calls > 1 and rows(again) == rows(expected)


def test_cache_dir_that_is_a_file_is_refused(tmp_path):
    model = tiny_model()
    images, labels = data(model)
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="cache_dir"):
        evaluate(model, (images, labels), preset="fast", cache_dir=path)


def test_the_model_class_and_a_generator_are_part_of_what_is_cached(tmp_path):
    """Same weights under another forward: attacked again; an attack with its own generator:
    never cached (the generator's state is not in the key)."""
    from flowtriton.attacks import FlowPGD

    model = Counting(tiny_model())
    images, labels = data(model)
    evaluate(model, (images, labels), preset="fast", attacks=["flowpgd"], cache_dir=tmp_path / "a")

    class Doubled(torch.nn.Sequential):
        def forward(self, x):
            return 2 * super().forward(x)

    other = Counting(Doubled(*model.model))
    evaluate(other, (images, labels), preset="fast", attacks=["flowpgd"], cache_dir=tmp_path / "a")
    assert other.calls > 1

    attack = {"pgd": FlowPGD(model, eps=0.02, steps=2, random_start=True, generator=torch.Generator())}
    evaluate(model, (images, labels), attacks=attack, cache_dir=tmp_path / "b")
    assert not list((tmp_path / "b").glob("*.pt"))
