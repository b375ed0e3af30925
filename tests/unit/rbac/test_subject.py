import pytest

from agent.errors import InvalidInput
from agent.rbac.subject import Subject, service_account, user

SA = Subject("ServiceAccount", "web", "shop")


def test_service_account_from_the_command_line():
    assert service_account("shop:web") == SA
    assert SA.username == "system:serviceaccount:shop:web"
    assert user("system:serviceaccount:shop:web") == SA
    assert user("jane").username == "jane"


@pytest.mark.parametrize("text", ["shop", "shop:", ":web", "Shop:web", "shop:web:x", "shop/web", "a" * 64 + ":web"])
def test_bad_service_accounts_are_refused(text):
    with pytest.raises(InvalidInput):
        service_account(text)


def test_bad_users_are_refused():
    for text in ("", "a\x1bb"):
        with pytest.raises(InvalidInput):
            user(text)


@pytest.mark.parametrize("binding_subject,bound", [
    ({"kind": "ServiceAccount", "name": "web", "namespace": "shop"}, True),
    ({"kind": "ServiceAccount", "name": "web", "namespace": "other"}, False),
    ({"kind": "ServiceAccount", "name": "web"}, False),
    ({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "system:serviceaccount:shop:web"}, True),
    ({"kind": "Group", "name": "system:serviceaccounts"}, True),
    ({"kind": "Group", "name": "system:serviceaccounts:shop"}, True),
    ({"kind": "Group", "name": "system:serviceaccounts:other"}, False),
    ({"kind": "Group", "name": "system:authenticated"}, True),
    ({"kind": "Group", "name": "system:unauthenticated"}, False),
    ("ServiceAccount", False),
])
def test_which_binding_subjects_name_a_service_account(binding_subject, bound):
    assert SA.bound_by(binding_subject) is bound


def test_users_are_bound_by_name_and_authenticated_group():
    jane = user("jane")
    assert jane.bound_by({"kind": "User", "name": "jane"})
    assert jane.bound_by({"kind": "Group", "name": "system:authenticated"})
    assert not jane.bound_by({"kind": "Group", "name": "system:serviceaccounts"})
    assert not jane.bound_by({"kind": "ServiceAccount", "name": "jane", "namespace": ""})
