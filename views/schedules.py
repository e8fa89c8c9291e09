"""Schedules: the list with next and last runs; pause, resume, run now and delete; a form that
creates or edits a schedule with a live preview of its next fire times."""

from __future__ import annotations

import json
import shlex
from typing import Any

import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

TYPES = ["cron", "interval", "webhook", "event"]
ZONES = [
    "UTC", "Europe/London", "Europe/Berlin", "Europe/Paris", "Europe/Madrid", "Europe/Amsterdam",
    "Europe/Stockholm", "Europe/Warsaw", "Europe/Athens", "Europe/Moscow", "America/New_York",
    "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Toronto",
    "America/Sao_Paulo", "America/Mexico_City", "Asia/Kolkata", "Asia/Dubai", "Asia/Singapore",
    "Asia/Shanghai", "Asia/Hong_Kong", "Asia/Tokyo", "Asia/Seoul", "Australia/Sydney",
    "Pacific/Auckland", "Africa/Johannesburg", "Africa/Lagos",
]  # fmt: skip
OTHER_ZONE = "Other (type an IANA name)"
OVERLAPS = {"default": None, "skip": "skip", "queue": "queue"}
NEW = "(new schedule)"
EXPRESSION_HELP = {
    "cron": "Five cron fields in the timezone below, e.g. `0 6 * * 1-5` (06:00 on weekdays).",
    "interval": "e.g. `every 2 hours`, `30 minutes`, `30m`, `1h30m`.",
    "webhook": "The path callers POST to under /api/v1/hooks/, e.g. `orders-arrived`.",
    "event": "Another pipeline's id, optionally `:completed`, `:failed`, `:cancelled` or `:any`"
    " (default completed), e.g. `etl-data-pipeline:completed`.",
}
FORM_DEFAULTS: dict[str, Any] = {
    "sf_name": "",
    "sf_type": "interval",
    "sf_expression": "",
    "sf_tz": "UTC",
    "sf_tz_other": "",
    "sf_params": "",
    "sf_catchup": "skip",
    "sf_catchup_cap": 10,
    "sf_overlap": "default",
    "sf_enabled": True,
}


# --- helpers ------------------------------------------------------------------------------------


def parse_params(text: str) -> dict[str, Any]:
    """`key=value` lines as run parameters; numbers and true/false keep their type."""
    out: dict[str, Any] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"parameters line {n}: {line!r} is not key=value")
        value = value.strip()
        try:
            parsed = json.loads(value)
            out[key.strip()] = parsed if isinstance(parsed, int | float | bool) else value
        except ValueError:
            out[key.strip()] = value
    return out


def params_text(params: dict[str, Any]) -> str:
    return "\n".join(
        f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in params.items()
    )


def form_timezone() -> str:
    zone = st.session_state["sf_tz"]
    return st.session_state["sf_tz_other"].strip() if zone == OTHER_ZONE else zone


def form_fields() -> dict[str, Any]:
    """The schedule the form describes, as the API's body (raises ValueError on bad params)."""
    s = st.session_state
    fields = {
        "name": s["sf_name"].strip(),
        "pipeline_id": s.get("sf_pipeline") or "",
        "type": s["sf_type"],
        "expression": s["sf_expression"].strip(),
        "timezone": form_timezone() or "UTC",
        "params": parse_params(s["sf_params"]),
        "catchup": s["sf_catchup"],
        "catchup_cap": int(s["sf_catchup_cap"]),
        "enabled": bool(s["sf_enabled"]),
    }
    if OVERLAPS[s["sf_overlap"]]:
        fields["overlap"] = OVERLAPS[s["sf_overlap"]]
    return fields


def flash(kind: str, text: str) -> None:
    """A message shown once on the next run of the page (set from a button's callback)."""
    st.session_state["sched_flash"] = (kind, text)


def load_form(schedules: dict[str, dict]) -> None:
    """Fill the form from the schedule picked in `sf_target` (or clear it for a new one)."""
    s = schedules.get(st.session_state["sf_target"])
    state = st.session_state
    if s is None:
        for key, value in FORM_DEFAULTS.items():
            state[key] = value
        return
    state["sf_name"] = s["name"]
    state["sf_pipeline"] = s["pipeline_id"]
    state["sf_type"] = s["type"]
    state["sf_expression"] = s["expression"]
    state["sf_tz"] = s["timezone"] if s["timezone"] in ZONES else OTHER_ZONE
    state["sf_tz_other"] = "" if s["timezone"] in ZONES else s["timezone"]
    state["sf_params"] = params_text(s["params"])
    state["sf_catchup"] = s["catchup"]
    state["sf_catchup_cap"] = s["catchup_cap"]
    state["sf_overlap"] = s["overlap"]
    state["sf_enabled"] = s["enabled"]


# --- callbacks (run before the page, so they may set widget state) --------------------------------


def save(c, target: str) -> None:
    try:
        fields = form_fields()
    except ValueError as exc:
        flash("error", str(exc))
        return
    try:
        if target == NEW:
            made = c.create_schedule(**fields)
            if made.get("secret"):
                st.session_state["sched_secret"] = (made["id"], made["hook_path"], made["secret"])
            flash("success", f"Created schedule {made['id']}.")
        else:
            made = c.update_schedule(target, **fields)
            flash("success", f"Saved schedule {made['id']}.")
    except FlexiError as exc:
        flash("error", f"Could not save the schedule: {exc}")
        return
    st.session_state["sched_selected"] = made["id"]


def act(c, action: str, sid: str) -> None:
    try:
        if action == "pause":
            c.pause_schedule(sid)
            flash("success", f"Paused {sid}.")
        elif action == "resume":
            s = c.resume_schedule(sid)
            flash("success", f"Resumed {sid}; next run {ui.when(s['next_run_at'])} UTC.")
        elif action == "run":
            run = c.run_schedule_now(sid)
            flash("success", f"Started run [{run['id']}]({ui.run_link(run['id'])}) of {sid}.")
        elif action == "delete":
            c.delete_schedule(sid)
            st.session_state.pop("sched_selected", None)
            if st.session_state.get("sf_target") == sid:
                st.session_state["sf_target"] = NEW
            flash("success", f"Deleted {sid}.")
    except FlexiError as exc:
        flash("error", f"Could not {action} {sid}: {exc}")


# --- the page -----------------------------------------------------------------------------------

c = ui.client()
st.title("Schedules")

kind, text = st.session_state.pop("sched_flash", (None, None))
if kind == "success":
    st.success(text)
elif kind == "error":
    st.error(text)

if "sched_secret" in st.session_state:
    sid, path, secret = st.session_state["sched_secret"]
    st.warning(
        f"Webhook **{sid}** was created. Its secret is shown here only once: store it now,"
        " it is not shown again.",
        icon="🔑",
    )
    st.code(secret, language=None)
    st.caption("Start a run by calling it:")
    st.code(
        f"curl -X POST {shlex.quote(ui.api_url() + path)}"
        f" -H {shlex.quote('X-Webhook-Secret: ' + secret)}"
        " -H 'content-type: application/json' -d '{}'",
        language="bash",
    )
    if st.button("I have stored the secret", key="sched_secret_done"):
        del st.session_state["sched_secret"]
        st.rerun()

try:
    schedules = {s["id"]: s for s in c.schedules()["schedules"]}
except FlexiError as exc:
    ui.show_error(exc, "Could not list schedules")
    st.stop()

if schedules:
    rows = [
        {
            "id": s["id"],
            "pipeline": s["pipeline_id"],
            "type": s["type"],
            "expression": f"{s['expression']} ({s['timezone']})"
            if s["type"] in ("cron", "interval")
            else s["expression"],
            "enabled": s["enabled"],
            "next run (UTC)": ui.when(s["next_run_at"]) if s["next_run_at"] else "-",
            "last run": ui.icon(s["last_run_status"]) if s["last_run_id"] else "-",
            "last run link": ui.run_link(s["last_run_id"]) if s["last_run_id"] else None,
            "last error": s["last_error"] or "",
            "source": s["source"],
        }
        for s in schedules.values()
    ]
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "last run link": st.column_config.LinkColumn("last run id", display_text=r"run=(.*)")
        },
    )
else:
    st.write("No schedules yet: create one with the form below.")

# --- the selected schedule ---
if schedules:
    st.subheader("Selected schedule")
    ids = list(schedules)
    if st.session_state.get("sched_selected") not in ids:
        st.session_state["sched_selected"] = ids[0]
    sid = st.selectbox(
        "Schedule",
        ids,
        key="sched_selected",
        format_func=lambda i: f"{i} · {schedules[i]['pipeline_id']} · {schedules[i]['type']}",
    )
    s = schedules[sid]
    cols = st.columns(4)
    if s["enabled"]:
        cols[0].button("⏸️ Pause", key="sched_pause", on_click=act, args=(c, "pause", sid))
    else:
        cols[0].button("▶️ Resume", key="sched_resume", on_click=act, args=(c, "resume", sid))
    cols[1].button("🚀 Run now", key="sched_run_now", on_click=act, args=(c, "run", sid))
    confirm = cols[3].checkbox("Confirm delete", key="sched_delete_confirm")
    cols[2].button(
        "🗑️ Delete",
        key="sched_delete",
        disabled=not confirm,
        on_click=act,
        args=(c, "delete", sid),
    )
    if s["last_run_id"]:
        st.markdown(
            f"Last run: {ui.icon(s['last_run_status'])}"
            f" [{s['last_run_id']}]({ui.run_link(s['last_run_id'])})"
            f" fired {ui.ago(s['last_fired_at'])}"
        )
    if s["last_error"]:
        st.error(f"Last error: {s['last_error']}")
    if s["type"] in ("cron", "interval"):
        try:
            preview = c.preview_schedule(sid, 10)
            label = "Next 10 fire times" + ("" if s["enabled"] else " (if resumed now)")
            st.caption(label)
            st.dataframe(
                [
                    {
                        f"local ({preview['timezone']})": local[:19].replace("T", " "),
                        "UTC": ui.when(t),
                    }
                    for local, t in zip(preview["local_times"], preview["times"], strict=True)
                ],
                hide_index=True,
            )
        except FlexiError as exc:
            ui.show_error(exc, "Could not preview the schedule")
    elif s["type"] == "webhook":
        st.markdown(
            f"Fires when called: `POST {ui.api_url()}{s['hook_path']}` with the header"
            " `X-Webhook-Secret`."
        )
    else:
        st.markdown(f"Fires when a run of `{s['expression']}` ends as given.")

# --- create or edit ---
st.subheader("Create or edit a schedule")
try:
    pipeline_ids = [p["id"] for p in c.pipelines(limit=1000)["pipelines"]]
except FlexiError as exc:
    ui.show_error(exc, "Could not list pipelines")
    pipeline_ids = []

for key, value in FORM_DEFAULTS.items():
    st.session_state.setdefault(key, value)
if st.session_state.get("sf_target") not in [NEW, *schedules]:
    st.session_state["sf_target"] = NEW
target = st.selectbox(
    "Schedule to edit", [NEW, *schedules], key="sf_target", on_change=load_form, args=(schedules,)
)
picked = st.session_state.get("sf_pipeline")
options = pipeline_ids + ([picked] if picked and picked not in pipeline_ids else [])

left, right = st.columns(2)
with left:
    st.text_input(
        "Name", key="sf_name", disabled=target != NEW, help="Letters, digits, . _ - and spaces"
    )
    st.selectbox("Pipeline", options, key="sf_pipeline")
    kind = st.selectbox("Type", TYPES, key="sf_type")
    st.text_input("Expression", key="sf_expression", help=EXPRESSION_HELP[kind])
    st.caption(EXPRESSION_HELP[kind])
    zone = st.selectbox("Timezone", [*ZONES, OTHER_ZONE], key="sf_tz")
    if zone == OTHER_ZONE:
        st.text_input("IANA timezone", key="sf_tz_other", placeholder="e.g. America/Bogota")
with right:
    st.text_area("Parameters (key=value, one a line)", key="sf_params", height=100)
    st.selectbox(
        "Catch-up after downtime",
        ["skip", "latest", "all"],
        key="sf_catchup",
        help="skip: none; latest: the last missed time; all: every missed time (up to the cap)",
    )
    st.number_input("Catch-up cap", min_value=1, max_value=1000, step=1, key="sf_catchup_cap")
    st.selectbox(
        "While a run is still going",
        list(OVERLAPS),
        key="sf_overlap",
        help="default: skip for cron and interval, queue for webhook and event",
    )
    st.checkbox("Enabled", key="sf_enabled", help="A paused schedule keeps its settings")

# live preview of the form's fire times
fields = None
try:
    fields = form_fields()
except ValueError as exc:
    st.error(str(exc))
if fields is not None and fields["expression"] and fields["pipeline_id"]:
    try:
        preview = c.preview_unsaved_schedule(
            n=5, **(fields | {"name": fields["name"] or "preview"})
        )
        if preview["times"]:
            st.caption(f"Next fire times ({preview['timezone']} · UTC)")
            st.markdown(
                "\n".join(
                    f"- {local[:19].replace('T', ' ')} · {ui.when(t)} UTC"
                    for local, t in zip(preview["local_times"], preview["times"], strict=True)
                )
            )
        else:
            st.caption(
                "A webhook schedule fires when its path is called."
                if fields["type"] == "webhook"
                else "An event schedule fires when a run of the upstream pipeline ends."
            )
    except FlexiError as exc:
        st.error(f"{exc}")

st.button(
    "Create schedule" if target == NEW else f"Save {target}",
    key="sf_save",
    type="primary",
    on_click=save,
    args=(c, target),
)
