"""The dashboard's configuration schema (config/dashboard.toml documents every key)."""

from __future__ import annotations

from dataclasses import dataclass

from tinyml_core.config import BrokerConfig, setting


@dataclass(frozen=True)
class DashboardOptions:
    id: str = setting("dashboard-1", "MQTT client id (the dashboard only subscribes)")
    listen: str = setting("127.0.0.1:8080", "HOST:PORT to serve on; loopback unless you choose "
                          "otherwise (then set username and password)")
    history_hours: float = setting(48.0, "hours of readings kept per node (as 10-minute steps)",
                                   min=1.0, max=24 * 30)
    forecast_hours: float = setting(6.0, "hours of forecasts kept per node (the chart draws "
                                    "each ahead of its reading)", min=1.0, max=24 * 30)
    keywords_kept: int = setting(200, "keyword results kept per node", min=1, max=100_000)
    errors_kept: int = setting(200, "error records kept per node", min=1, max=100_000)
    max_nodes: int = setting(1000, "nodes kept; the least recently heard go first",
                             min=1, max=100_000)
    state_path: str = setting("var/{id}-history.json", "where the history is saved (on a "
                              "clean stop and every state_save_s) and loaded at start ({id}: "
                              "the dashboard id); empty: not saved")
    state_save_s: float = setting(300.0, "seconds between saves of the history while messages "
                                  "arrive (a full node is about 23 kB); 0: saved on a clean "
                                  "stop only", min=0.0, max=86_400)
    username: str = setting("", "HTTP basic auth user; empty: no login")
    password: str = setting("", "HTTP basic auth password (prefer TINYML_DASHBOARD_PASSWORD)",
                            secret=True)


@dataclass(frozen=True)
class DashboardSettings:
    broker: BrokerConfig = setting(BrokerConfig(), "MQTT broker")
    dashboard: DashboardOptions = setting(DashboardOptions(), "web dashboard")
