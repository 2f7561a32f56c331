"""Every view of a config is built from ledger.Branding, so a branding field is listed once."""

from __future__ import annotations

import argparse

import msgspec
import pytest

import ledger
from service import cli_admin
from service.admin_schemas import AdminConfig, ConfigCreate, ConfigPatch, admin_config, branding_fields
from service.schemas import ConfigOut, config_out
from service.widget_schemas import WidgetConfig

BRANDING = list(ledger.Branding.__struct_fields__)
CONFIG = ledger.ConfigRecord(
    config_id="0c6c0d9e-3b1f-4f5e-9a55-2f1e4b6f3b21", agent_name="A", company_name="C", header_text="H",
    is_full_width=True, created_ms=1_700_000_000_000, updated_ms=1_700_000_001_000,
)  # fmt: skip


def _parser(action: str) -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser().add_subparsers(dest="command")
    cli_admin.add_commands(commands)
    config = commands.choices["config"]
    subparsers = next(a for a in config._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = subparsers.choices[action]
    return parser


class TestBranding:
    """ledger.Branding is the one list of the branding fields; every view of a config has them all."""

    @pytest.mark.parametrize("view", [ledger.ConfigRecord, ConfigOut, AdminConfig, WidgetConfig, ConfigCreate,
                                      ConfigPatch], ids=lambda view: view.__name__)  # fmt: skip
    def test_every_view_has_every_branding_field(self, view: type[msgspec.Struct]) -> None:
        """The record, the three answers and the two admin inputs each carry every branding field."""
        assert set(BRANDING) <= set(view.__struct_fields__)

    def test_a_create_requires_what_a_new_config_has_no_default_for(self) -> None:
        """ConfigCreate requires the agent and company names (no default in the record), nothing else;
        ConfigPatch requires nothing."""
        required = {f.name for f in msgspec.structs.fields(ConfigCreate) if f.required}
        assert required == {"agent_name", "company_name"}
        assert not [f for f in msgspec.structs.fields(ConfigPatch) if f.required]

    def test_the_admin_input_bounds_every_text(self) -> None:
        """A branding text longer than its bound is a validation error, as before the fields were derived."""
        for name, chars in (("header_text", 256), ("logo_url", 2048), ("welcome_message", 16_000)):
            msgspec.convert({name: "x" * chars}, ConfigPatch)
            with pytest.raises(msgspec.ValidationError, match=name):
                msgspec.convert({name: "x" * (chars + 1)}, ConfigPatch)

    @pytest.mark.parametrize("action", ["create", "update"])
    def test_the_cli_has_an_option_per_branding_field(self, action: str) -> None:
        """`config create` and `config update` take every branding field, stored under its name, with
        the field's description as help; the yes-or-no one is a --full-width/--no-full-width flag."""
        options = {a.dest: a for a in _parser(action)._actions}
        for field in branding_fields():
            assert options[field.name].help == field.description
            assert options[field.name].required == (action == "create" and field.required)
        assert options["is_full_width"].option_strings == ["--full-width", "--no-full-width"]

    def test_cli_options_become_the_admin_apis_record_fields(self) -> None:
        """The CLI's options convert as a PATCH body does: weights to milli-tokens, flags kept."""
        argv = [CONFIG.config_id, "--header-text", "Hi", "--no-full-width", "--prompt-weight", "2.5"]
        args = _parser("update").parse_args([*argv, "--rate-limit-burst", "3"])
        assert cli_admin._config_fields(args) == {
            "header_text": "Hi", "is_full_width": False, "prompt_weight_milli": 2500, "rate_limit_burst": 3,
        }  # fmt: skip


class TestViews:
    """Each view is the record's branding plus what its audience needs."""

    def test_the_public_config_keeps_api_mds_order(self) -> None:
        """config_out lists the fields in api.md Part A's order, the dates among the branding."""
        encoded = msgspec.json.decode(msgspec.json.encode(config_out(CONFIG)))
        assert list(encoded) == [
            "config_id", "agent_name", "company_name", "primary_color", "header_text", "logo_url",
            "welcome_message", "chat_first_page_description", "created_at", "updated_at", "is_full_width",
            "start_page_title", "start_page_slogan",
        ]  # fmt: skip
        assert (encoded["header_text"], encoded["created_at"]) == ("H", "2023-11-14T22:13:20Z")

    def test_the_admin_view_starts_with_the_id_then_the_branding(self) -> None:
        """admin_config: the id, the branding in the record's order, the operator's fields, the dates."""
        encoded = list(msgspec.json.decode(msgspec.json.encode(admin_config(CONFIG))))
        assert encoded[: len(BRANDING) + 1] == ["config_id", *BRANDING]
        assert encoded[-2:] == ["created_at", "updated_at"]
