"""FlexiRoaster's app: `streamlit run app.py` (or `flexiroaster up`, which also starts the runtime).

Every page talks to the runtime through its REST API (flexiroaster.client); see flexiroaster/ui.py.
"""

import streamlit as st

st.set_page_config(page_title="FlexiRoaster", page_icon="☕", layout="wide")

PAGES = [
    st.Page("views/dashboard.py", title="Dashboard", icon="📊", url_path="dashboard", default=True),
    st.Page("views/pipelines.py", title="Pipelines", icon="🧩", url_path="pipelines"),
    st.Page("views/executions.py", title="Executions", icon="▶️", url_path="executions"),
    st.Page("views/schedules.py", title="Schedules", icon="⏰", url_path="schedules"),
    st.Page("views/data.py", title="Data", icon="🗄️", url_path="data"),
    st.Page("views/insights.py", title="Insights", icon="💡", url_path="insights"),
    st.Page("views/alerts.py", title="Alerts", icon="🚨", url_path="alerts"),
    st.Page("views/logs.py", title="Logs", icon="📜", url_path="logs"),
    st.Page("views/secrets.py", title="Secrets", icon="🔑", url_path="secrets"),
    st.Page("views/connections.py", title="Connections", icon="🔌", url_path="connections"),
    st.Page("views/settings.py", title="Settings", icon="⚙️", url_path="settings"),
]

st.navigation(PAGES).run()
