"""The Streamlit page of the diabetes-readmission platform (the script is streamlit/app.py)."""
