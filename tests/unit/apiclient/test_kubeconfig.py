"""agent/apiclient/kubeconfig.py: finding and merging kubeconfigs as kubectl does, and the errors that name the right flag."""

import json
import os

import pytest

from agent.errors import InvalidInput
from agent.apiclient.kubeconfig import (ClusterConfig, config_for, controller_config, default_kubeconfig, in_cluster_config,
                              kubeconfig_config, merge, search_paths)


def write(path, current=None, clusters=(), users=(), contexts=()):
    document = {"apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": n, "cluster": c} for n, c in clusters],
                "users": [{"name": n, "user": u} for n, u in users],
                "contexts": [{"name": n, "context": c} for n, c in contexts]}
    if current is not None:
        document["current-context"] = current
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return str(path)


def test_search_paths_split_kubeconfig_drop_empty_and_repeated_entries_else_home():
    assert search_paths({"KUBECONFIG": "/a::/b:/a:"}, "/home/u") == ["/a", "/b"]
    assert search_paths({"KUBECONFIG": ""}, "/home/u") == ["/home/u/.kube/config"]
    assert search_paths({}, "/home/u") == ["/home/u/.kube/config"]
    assert search_paths({}, None) == []


def test_first_file_to_define_a_name_or_set_current_context_wins(tmp_path):
    first = write(tmp_path / "one/config", current=None, clusters=[("shared", {"server": "https://first"})],
                  users=[("u", {"token": "first-token"})])
    second = write(tmp_path / "two/config", current="ctx",
                   clusters=[("shared", {"server": "https://second"}), ("only-second", {"server": "https://2"})],
                   users=[("u", {"token": "second-token"})],
                   contexts=[("ctx", {"cluster": "shared", "user": "u"})])
    third = write(tmp_path / "three/config", current="other", contexts=[("ctx", {"cluster": "only-second"}),
                                                                        ("other", {"cluster": "only-second"})])
    config = default_kubeconfig({"KUBECONFIG": os.pathsep.join([first, second, third])}, "/nonexistent")
    # current-context from the second file (the first sets none); the context from the second (first to
    # define "ctx"); the cluster and user named there from the first file.
    assert (config.server, config.token) == ("https://first", "first-token")
    config = default_kubeconfig({"KUBECONFIG": os.pathsep.join([third, second, first])}, "/nonexistent")
    assert (config.server, config.token) == ("https://2", None)


def test_missing_files_in_kubeconfig_are_skipped_but_an_explicit_file_must_exist(tmp_path):
    present = write(tmp_path / "config", current="c", clusters=[("k", {"server": "https://k"})],
                    contexts=[("c", {"cluster": "k"})])
    config = default_kubeconfig({"KUBECONFIG": f"{tmp_path}/missing:{present}"}, "/nonexistent")
    assert config.server == "https://k"
    assert default_kubeconfig({"KUBECONFIG": f"{tmp_path}/missing"}, "/nonexistent") is None
    with pytest.raises(InvalidInput, match="cannot read kubeconfig .*/missing: no such file"):
        kubeconfig_config(f"{tmp_path}/missing")


def test_home_kube_config_is_the_default(tmp_path):
    write(tmp_path / ".kube/config", current="c", clusters=[("k", {"server": "https://home"})],
          contexts=[("c", {"cluster": "k"})])
    assert default_kubeconfig({"HOME": str(tmp_path)}).server == "https://home"
    assert default_kubeconfig({}, str(tmp_path)).server == "https://home"


def test_relative_paths_are_relative_to_the_file_that_holds_them(tmp_path):
    first = write(tmp_path / "a/config", users=[("u", {"client-certificate": "u.crt", "client-key": "/abs/u.key",
                                                       "tokenFile": "tok"}),
                                                ("plugin", {"exec": {"command": "bin/creds", "apiVersion":
                                                                     "client.authentication.k8s.io/v1beta1"}}),
                                                ("on-path", {"exec": {"command": "aws", "apiVersion":
                                                                      "client.authentication.k8s.io/v1beta1"}})])
    second = write(tmp_path / "b/config", current="c", clusters=[("k", {"server": "https://k",
                                                                        "certificate-authority": "ca.crt"})],
                   contexts=[("c", {"cluster": "k", "user": "u"}), ("p", {"cluster": "k", "user": "plugin"}),
                             ("q", {"cluster": "k", "user": "on-path"})])
    environ = {"KUBECONFIG": f"{first}:{second}"}
    config = default_kubeconfig(environ, "/nonexistent")
    assert config.ca_file == str(tmp_path / "b/ca.crt")
    assert (config.cert_file, config.key_file, config.token_file) == (
        str(tmp_path / "a/u.crt"), "/abs/u.key", str(tmp_path / "a/tok"))
    assert default_kubeconfig(environ, "/nonexistent", "p").exec_plugin.command == str(tmp_path / "a/bin/creds")
    assert default_kubeconfig(environ, "/nonexistent", "q").exec_plugin.command == "aws"  # looked up in PATH


def test_merge_is_pure_and_keeps_the_file_of_each_entry():
    merged = merge([("/x/one", {"users": [{"name": "u", "user": {"token": "a"}}]}),
                    ("/y/two", {"users": [{"name": "u", "user": {"token": "b"}}], "current-context": "c"})])
    assert merged["users"] == {"u": ("/x/one", {"token": "a"})} and merged["current-context"] == "c"


@pytest.mark.parametrize("user,message", [
    ({"exec": {"command": "x", "apiVersion": "client.authentication.k8s.io/v1alpha1"}}, "v1alpha1' is not supported"),
    ({"exec": {"command": "x", "apiVersion": "client.authentication.k8s.io/v1"}}, "interactiveMode must be set"),
    ({"exec": {"command": "x", "apiVersion": "client.authentication.k8s.io/v1beta1", "interactiveMode": "Sometimes"}},
     "interactiveMode 'Sometimes' is not one of"),
    ({"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1"}}, "exec needs a command"),
    ({"exec": {"command": "x", "apiVersion": "client.authentication.k8s.io/v1beta1", "env": [{"value": "v"}]}},
     "exec env must be a list"),
    ({"auth-provider": {"name": "gcp"}}, "auth-provider"),
])
def test_unusable_user_stanzas_are_one_line_errors(tmp_path, user, message):
    path = write(tmp_path / "config", current="c", clusters=[("k", {"server": "https://k"})], users=[("u", user)],
                 contexts=[("c", {"cluster": "k", "user": "u"})])
    with pytest.raises(InvalidInput, match=message):
        kubeconfig_config(path)


def test_v1beta1_interactive_mode_defaults_to_if_available(tmp_path):
    path = write(tmp_path / "config", current="c", clusters=[("k", {"server": "https://k"})],
                 users=[("u", {"exec": {"command": "x", "apiVersion": "client.authentication.k8s.io/v1beta1",
                                        "env": [{"name": "A", "value": "1"}], "args": ["get-token"],
                                        "provideClusterInfo": True}})],
                 contexts=[("c", {"cluster": "k", "user": "u"})])
    plugin = kubeconfig_config(path).exec_plugin
    assert (plugin.interactive_mode, plugin.env, plugin.args, plugin.provide_cluster_info) == (
        "IfAvailable", (("A", "1"),), ("get-token",), True)


def test_in_cluster_outside_a_cluster_names_the_flag_of_the_command():
    with pytest.raises(InvalidInput, match=r"KUBERNETES_SERVICE_HOST is not set \(use --kube-api kubeconfig:PATH\)"):
        config_for("in-cluster", {})
    with pytest.raises(InvalidInput, match=r"\(use --kubeconfig PATH, KUBECONFIG or ~/.kube/config\)"):
        controller_config(None, None, {"HOME": "/nonexistent"})


def test_in_cluster_reads_the_token_file_and_keeps_its_path_for_rereading(tmp_path):
    (tmp_path / "token").write_text("sa-token\n")
    config = in_cluster_config(str(tmp_path), {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert config == ClusterConfig("https://[fd00::1]:6443", token="sa-token", ca_file=str(tmp_path / "ca.crt"),
                                   token_file=str(tmp_path / "token"))


def test_kube_api_choices(tmp_path):
    home = write(tmp_path / ".kube/config", current="c", clusters=[("k", {"server": "https://home"})],
                 contexts=[("c", {"cluster": "k"})])
    other = write(tmp_path / "other", current="c", clusters=[("k", {"server": "https://other"})],
                  contexts=[("c", {"cluster": "k"})])
    assert config_for("off", {"KUBECONFIG": other}) is None
    # auto: in a pod the service account; else KUBECONFIG when set; a laptop's ~/.kube/config is not used unasked.
    assert config_for("auto", {"HOME": str(tmp_path)}) is None
    assert config_for("auto", {"HOME": str(tmp_path), "KUBECONFIG": other}).server == "https://other"
    assert config_for("kubeconfig", {"HOME": str(tmp_path)}).server == "https://home"
    assert config_for("kubeconfig", {"HOME": str(tmp_path), "KUBECONFIG": other}).server == "https://other"
    assert config_for(f"kubeconfig:{home}", {}).server == "https://home"
    with pytest.raises(InvalidInput, match="KUBECONFIG is not set and ~/.kube/config does not exist"):
        config_for("kubeconfig", {"HOME": str(tmp_path / "nobody")})
    with pytest.raises(InvalidInput, match="kube_api must be"):
        config_for("kubeconfig:", {})


def test_controller_order_flag_then_kubeconfig_then_service_account_then_home(tmp_path):
    home = tmp_path / "home"
    write(home / ".kube/config", current="c", clusters=[("k", {"server": "https://home"})],
          contexts=[("c", {"cluster": "k"}), ("d", {"cluster": "k2"})])
    flag = write(tmp_path / "flag", current="c", clusters=[("k", {"server": "https://flag"})],
                 contexts=[("c", {"cluster": "k"})])
    env_file = write(tmp_path / "env", current="c", clusters=[("k", {"server": "https://env"})],
                     contexts=[("c", {"cluster": "k"})])
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t")
    environ = {"HOME": str(home), "KUBECONFIG": env_file, "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert controller_config(flag, None, environ).server == "https://flag"
    assert controller_config(None, None, environ).server == "https://env"
    del environ["KUBECONFIG"]
    with pytest.raises(InvalidInput, match="cannot read the service account token"):
        controller_config(None, None, environ)  # in a pod: the service account, not ~/.kube/config
    del environ["KUBERNETES_SERVICE_HOST"]
    assert controller_config(None, None, environ).server == "https://home"
    with pytest.raises(InvalidInput, match="cluster 'k2' has no server"):
        controller_config(None, "d", environ)
    with pytest.raises(InvalidInput, match="none of the kubeconfig files KUBECONFIG names exists"):
        controller_config(None, None, {**environ, "KUBECONFIG": str(tmp_path / "nope")})
