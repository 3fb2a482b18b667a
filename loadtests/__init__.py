"""Load tests: the Locust scenario, the SLO gate, baseline servers and the serving benchmark."""
