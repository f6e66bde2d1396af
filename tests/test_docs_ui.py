"""The docs UI: the OpenAPI document describes this project, and a newcomer who runs `make serve`
can open `/` in a real browser, authorize with a key and try `/predict` there.

The browser tier drives Debian's chromium through its chromedriver with Selenium. It runs in CI
(CI=true; the packages are installed when missing, as root) and wherever both are installed.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import bentoml
import pytest
import requests
from helpers import API_KEYS, BIN, ROOT, RunningServer, example, start_server

from iris_bento import project_version

API_ROUTES = ("/predict", "/batch_predict")
PUBLIC_ROUTES = (
    *("/health", "/livez", "/readyz", "/healthz", "/metrics", "/schema.json"),
    *("/v2", "/v2/health/live", "/v2/health/ready"),
)
V2_MODEL_ROUTES = tuple(
    f"/v2/models/{{model_name}}{version}{route}"
    for version in ("", "/versions/{model_version}")
    for route in ("", "/ready", "/infer")
)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
IN_CI = os.environ.get("CI", "").lower() == "true"
# Where to write the browser's screenshot of the page after "Execute" (docs/images/docs-ui.png
# in the README is one).
SCREENSHOT = os.environ.get("IRIS_DOCS_SCREENSHOT")
# One operation's block in Swagger UI (its class list has "opblock", not just a longer name).
OPERATION = "contains(concat(' ', @class, ' '), ' opblock ')"


def all_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_refs(value)


@pytest.fixture(scope="module")
def document(client: Any, auth: dict[str, str]) -> dict[str, Any]:
    response = client.get("/docs.json", headers=auth)
    assert response.status_code == 200
    return response.json()


def test_the_document_is_the_projects_own(document: dict[str, Any]) -> None:
    info = document["info"]
    assert info["title"] == "Iris classifier"
    assert info["version"] == project_version()
    assert "contact" not in info
    text = json.dumps(document)
    assert bentoml.__version__ not in text
    assert "bentoml.com" not in text and "BentoML Slack" not in text


def test_the_document_names_every_route_and_its_security(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert set(paths) == {*API_ROUTES, *PUBLIC_ROUTES, *V2_MODEL_ROUTES}
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    assert schemes["Bearer"] == {"type": "http", "scheme": "bearer"}
    assert document["security"] == [{"ApiKey": []}, {"Bearer": []}]
    for path in PUBLIC_ROUTES:
        assert paths[path]["get"]["security"] == [], path
    for path in V2_MODEL_ROUTES:
        assert all("security" not in operation for operation in paths[path].values()), path
    for path in API_ROUTES:
        operation = paths[path]["post"]
        assert "security" not in operation, path  # the document's: a key
        assert operation["requestBody"]["required"] is True
        assert {"200", "400", "401", "413", "415", "429", "503"} <= set(operation["responses"])


def test_every_reference_in_the_document_resolves(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    refs = set(all_refs(document))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/") and ref.split("/")[-1] in schemas, ref


def test_the_documented_examples_are_answered(
    document: dict[str, Any], client: Any, auth: dict[str, str]
) -> None:
    """What "Try it out" sends first: the README's payloads, each answered 200."""
    for path in API_ROUTES:
        examples = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        for name, item in examples["examples"].items():
            assert item["value"] == example(name)
            assert client.post(path, json=item["value"], headers=auth).status_code == 200


# --- the page, as `make serve` serves it -------------------------------------------------------


@pytest.fixture(scope="module")
def served(model_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`make serve`'s launcher, which makes the docs public."""
    env = {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with start_server(
        [str(ROOT / "scripts" / "serve.sh")], ROOT, tmp_path_factory.mktemp("docs"), env=env
    ) as running:
        yield running


def test_make_serve_opens_the_docs_and_nothing_else(served: RunningServer) -> None:
    page = requests.get(f"{served.url}/", timeout=5)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "googletagmanager" not in page.text and bentoml.__version__ not in page.text
    for path in ("/docs.json", "/docs.js", "/static_content/swagger-ui-bundle.js"):
        assert requests.get(f"{served.url}{path}", timeout=5).status_code == 200, path
    assert requests.post(f"{served.url}/predict", json=example("predict")).status_code == 401


def browser_ready() -> None:
    """Chromium and its driver, installed when missing in CI; otherwise a skip."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    if not IN_CI:
        pytest.skip("browser tier: chromium and chromium-driver not installed (runs in CI)")
    installer = [str(ROOT / "scripts" / "apt_install.sh"), "chromium", "chromium-driver"]
    subprocess.run(installer, check=True, timeout=600)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    browser_ready()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1280,1400"):
        options.add_argument(argument)
    # Every request the page makes, from the DevTools log.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver: Any) -> set[str]:
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def test_a_newcomer_tries_predict_in_the_browser(served: RunningServer, browser: Any) -> None:
    """Load the page without a key, Authorize with one, "Try it out" on /predict, Execute: 200."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(f"{served.url}/")
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "button.authorize"))).click()
    api_key = wait.until(
        ready.visibility_of_element_located(
            (By.XPATH, "//div[@class='auth-container'][.//h4[contains(., 'ApiKey')]]")
        )
    )
    api_key.find_element(By.CSS_SELECTOR, "input").send_keys(API_KEYS[0])
    api_key.find_element(By.CSS_SELECTOR, "button.authorize").click()
    browser.find_element(By.CSS_SELECTOR, "button.btn-done").click()

    predict = wait.until(
        ready.presence_of_element_located(
            (By.XPATH, f"//div[{OPERATION}][.//*[@data-path='/predict']]")
        )
    )
    predict.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "button.try-out__btn"))).click()
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "button.execute"))).click()
    status = wait.until(
        ready.visibility_of_element_located(
            (By.CSS_SELECTOR, ".live-responses-table .response .response-col_status")
        )
    )
    answer = predict.find_element(By.CSS_SELECTOR, ".live-responses-table .microlight").text
    if SCREENSHOT:
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", status)
        browser.save_screenshot(SCREENSHOT)

    assert status.text.strip() == "200", answer
    assert json.loads(answer)["label"] == "setosa"
    # Nothing from elsewhere: no tag manager, no CDN, no validator (data: URLs have no host).
    here = {"", urlsplit(served.url).netloc}
    outside = {url for url in requested_urls(browser) if urlsplit(url).netloc not in here}
    assert not outside, outside
