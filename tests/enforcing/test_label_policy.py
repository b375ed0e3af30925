"""Label validation against a real loaded policy (libselinux security_check_context)."""

import pytest

from agent.node import host
from agent.errors import InvalidLabel
from agent.label import Label

pytestmark = pytest.mark.enforcing


def test_policy_accepts_a_container_file_label():
    label = Label.parse("system_u:object_r:container_file_t:s0:c1,c2")
    assert host.context_accepted(label) is True
    host.check_context(label)


@pytest.mark.parametrize("text", [
    "system_u:object_r:no_such_type_t:s0",      # unknown type
    "system_u:object_r:container_file_t:s0:c2000",  # category beyond the policy's c0.c1023
    "nobody_u:object_r:container_file_t:s0",     # unknown user
])
def test_policy_refuses_what_the_grammar_allows(text):
    label = Label.parse(text)
    assert host.context_accepted(label) is False
    with pytest.raises(InvalidLabel) as info:
        host.check_context(label)
    assert "loaded SELinux policy does not accept it" in str(info.value)
