"""agent/avc/applied.py: the levels of finished publishes, handed to an attributor as they come and go."""

from agent.avc.applied import AppliedLevels, levels_in_publishes, pod_level
from agent.avc.poddir import PodRef

WEB = ("shop", "web-1")
AT_C4_C9 = "system_u:object_r:container_file_t:s0:c4,c9"


def test_only_labels_with_categories_and_a_pod_count():
    publishes = [(AT_C4_C9, WEB), ("system_u:object_r:container_file_t:s0:c9,c4", WEB),
                 ("system_u:object_r:container_file_t:s0", ("shop", "db-0")), (None, WEB), (AT_C4_C9, None),
                 (AT_C4_C9, ("too", "many", "parts")), ("not a label", WEB)]
    assert levels_in_publishes(publishes) == {("s0:c4,c9", "shop", "web-1"): PodRef("shop", "web-1", level="s0:c4,c9")}
    assert pod_level("u:r:t:s0-s0:c2,c1") == "s0-s0:c1,c2" and pod_level("u:r:t") is None


class Recorder:
    """An attributor's level interface, recording what it is told."""

    def __init__(self):
        self.levels: dict[tuple, int] = {}

    def add_level(self, level, pod):
        key = (level, pod.namespace, pod.name)
        self.levels[key] = self.levels.get(key, 0) + 1

    def remove_level(self, level, pod):
        key = (level, pod.namespace, pod.name)
        self.levels[key] -= 1
        if not self.levels[key]:
            del self.levels[key]


def test_sync_gives_the_difference_and_stops_when_unwatched():
    publishes = [(AT_C4_C9, WEB)]
    attributor, levels = Recorder(), AppliedLevels()
    levels.feed(attributor)
    levels.watch(lambda: list(publishes))
    assert attributor.levels == {("s0:c4,c9", "shop", "web-1"): 1} and len(levels) == 1
    publishes.append(("system_u:object_r:container_file_t:s0:c9,c4", WEB))  # a second volume, same level
    levels.sync()
    assert attributor.levels == {("s0:c4,c9", "shop", "web-1"): 1}
    publishes[:] = [(AT_C4_C9, ("other", "db-0"))]
    levels.sync()
    assert attributor.levels == {("s0:c4,c9", "other", "db-0"): 1}
    levels.watch(None)
    publishes.clear()
    levels.sync()
    assert attributor.levels == {("s0:c4,c9", "other", "db-0"): 1}  # nothing read while unwatched
