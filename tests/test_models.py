"""Service config files: a wrong file fails before any AWS call, naming the file and field path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tasks.config.models import Traffic, find_service, load_all_services, load_service
from tasks.core.errors import ConfigError

SAMPLE = Path(__file__).parents[1] / "deployments" / "sample-app.yaml"


def write(tmp_path: Path, data: object, name: str = "svc.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def copy_with(tmp_path: Path, data: dict, name: str = "svc.yaml") -> Path:
    """``data`` as a service YAML beside a copy of the sample's templates."""
    if not (tmp_path / "sample-app").exists():
        shutil.copytree(SAMPLE.parent / "sample-app", tmp_path / "sample-app")
    return write(tmp_path, data, name)


def sample() -> dict:
    return yaml.safe_load(SAMPLE.read_text())


def test_sample_config_is_valid() -> None:
    cfg = load_service(SAMPLE)
    assert cfg.name == "sample-app"
    assert cfg.codedeploy_application == "AppECS-demo-sample-app"
    assert cfg.codedeploy_group == "DgpECS-demo-sample-app"
    assert cfg.path(cfg.task_definition).exists()


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda d: d["ecs"].update(container_port=70000), "ecs.container_port", "less than or equal to 65535"),
        (lambda d: d["strategy"].update(type="blue-green"), "strategy.type",
         "'task-sets', 'codedeploy', 'rolling' or 'ecs-native'"),
        (lambda d: d["strategy"]["traffic"].pop("percent"), "strategy.traffic", "canary needs percent"),
        (lambda d: d["load_balancer"].update(target_groups=["a", "a"]), "load_balancer", "two different target groups"),
        (lambda d: d.pop("load_balancer"), "(top level)", "needs load_balancer"),
        (lambda d: d["verify"]["http"][1].update(path="health"), "verify.http.1.path", "should match pattern"),
        (lambda d: d["ecs"].update(contianer="web"), "ecs.contianer", "unknown field"),
        (lambda d: d["ecr"].update(repository="Sample App"), "ecr.repository", "should match pattern"),
        (
            lambda d: d["load_balancer"].update(test_listener={"port": 8001}),
            "load_balancer.test_listener",
            "give either arn",
        ),
        (lambda d: d["ecs"].update(desired_count="2"), "ecs.desired_count", "expected a whole number"),
        (lambda d: d.update(bake_seconds=True), "bake_seconds", "expected a number"),
        (lambda d: d["verify"].update(target_health="yes"), "verify.target_health", "expected true or false"),
        (lambda d: d["strategy"].update(type="rolling"), "strategy.traffic", "rolling does not shift traffic"),
        (lambda d: d.update(task_definition="/etc/passwd"), "task_definition", "absolute paths are refused"),
        (lambda d: d["strategy"].update(appspec="../x.yml"), "strategy.appspec", "'..' leads strategy.appspec"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, mutate, field: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    data = sample()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_service(path)
    text = str(err.value)
    assert str(path) in text
    line = next((ln for ln in text.splitlines() if ln.strip().startswith(field + ":")), None)
    assert line is not None, text
    assert reason in line, text


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"svc.yaml: service config is not valid YAML at line 2 column 1"):
        load_service(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match=r"expected a mapping"):
        load_service(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"cannot read service config"):
        load_service(tmp_path / "missing.yaml")


def test_every_shipped_service_loads() -> None:
    """deployments/*.yaml with their templates pass every load-time check; the repo may live outside."""
    configs = load_all_services(SAMPLE.parent)
    assert sorted(c.name for c in configs) == [
        "sample-app", "sample-app-analysis", "sample-app-cd", "sample-app-native"]
    assert all(c.repo_location.endswith("/.sandbox/repos/sample-app") for c in configs)


def test_rolling_without_traffic_loads(tmp_path: Path) -> None:
    data = sample()
    data["strategy"] = {"type": "rolling"}
    cfg = load_service(copy_with(tmp_path, data))
    assert cfg.strategy.type == "rolling"


def test_unknown_service_lists_known_ones(tmp_path: Path) -> None:
    copy_with(tmp_path, sample(), "sample-app.yaml")
    with pytest.raises(ConfigError, match=r"no service named 'nope' .*known: sample-app"):
        find_service("nope", tmp_path)


@pytest.mark.parametrize(
    ("traffic", "steps"),
    [
        ({"type": "all-at-once"}, [100]),
        ({"type": "canary", "percent": 10, "interval_seconds": 300}, [10, 100]),
        ({"type": "linear", "percent": 25, "interval_seconds": 60}, [25, 50, 75, 100]),
        ({"type": "linear", "percent": 30, "interval_seconds": 60}, [30, 60, 90, 100]),
    ],
)
def test_traffic_steps(traffic: dict, steps: list[int]) -> None:
    assert Traffic.model_validate(traffic).steps() == steps


def test_a_broken_sibling_file_neither_crashes_nor_blocks_a_release(tmp_path: Path) -> None:
    """A release reads its own file strictly and its folder's others leniently (only to spot a twin)."""
    copy_with(tmp_path, sample(), "sample-app.yaml")
    write(tmp_path, "ecs: " + "[" * 1000 + "]" * 1000 + "\n", "deep.yaml")
    write(tmp_path, "name: a\nname: b\n", "twice.yaml")
    assert find_service("sample-app", tmp_path).name == "sample-app"
    with pytest.raises(ConfigError, match=r"deep.yaml: service config is nested too deeply to be read"):
        load_all_services(tmp_path)


def test_yaml_merge_keys_override_without_counting_as_written_twice(tmp_path: Path) -> None:
    data = sample()
    text = yaml.safe_dump({k: v for k, v in data.items() if k != "ecs"})
    ecs = data["ecs"]
    text += (f"x-ecs: &ecs {{cluster: other, service: {ecs['service']}, container: {ecs['container']}, "
             f"container_port: {ecs['container_port']}}}\n")
    text += f"ecs:\n  <<: *ecs\n  cluster: {ecs['cluster']}\n"
    with pytest.raises(ConfigError, match=r"x-ecs: unknown field"):  # merges are fine; the anchor's own key is not
        load_service(copy_with(tmp_path, text))


def test_a_fifo_or_a_huge_file_is_refused_not_read(tmp_path: Path) -> None:
    """Reading a FIFO blocks forever (a release would hang before its first AWS call); a huge file fills memory."""
    data = sample()
    os.mkfifo(tmp_path / "pipe.json")
    data["task_definition"] = "pipe.json"
    with pytest.raises(ConfigError, match=r"task_definition: .*/pipe.json is not a regular file; point it at a"):
        load_service(copy_with(tmp_path, data))
    (tmp_path / "huge.json").write_text(" " * (1024 * 1024 + 1))
    data["task_definition"] = "huge.json"
    with pytest.raises(ConfigError, match=r"huge.json is larger than 1024 KiB, far more than a config or template"):
        load_service(copy_with(tmp_path, data))
    os.mkfifo(tmp_path / "other.yaml")
    with pytest.raises(ConfigError, match=r"other.yaml: service config is not a regular file"):
        load_all_services(tmp_path)
    (tmp_path / "svc.yaml").unlink()
    copy_with(tmp_path, sample(), "sample-app.yaml")
    assert find_service("sample-app", tmp_path).name == "sample-app", "a sibling FIFO is skipped, not read"


def test_yaml_aliases_are_fine_until_they_explode(tmp_path: Path) -> None:
    """Aliases share one value when loaded; json.dumps writes each copy out (or loops on `&a [*a]`)."""
    from tasks.config.inputs import parse_yaml

    assert parse_yaml("b: &b {x: 1}\nl: [*b, *b]\n", "f.yml", "appspec") == {"b": {"x": 1}, "l": [{"x": 1}] * 2}
    for text in ("a: &a [*a]\n", "a: &a [" + ",".join(["1"] * 400) + "]\nb: &b [" + ",".join(["*a"] * 300) + "]\n"):
        with pytest.raises(ConfigError, match=r"f.yml: appspec expands to more than 100000 values through YAML"):
            parse_yaml(text, "f.yml", "appspec")
