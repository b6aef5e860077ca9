"""Drives the playground in headless Chromium (Debian's chromium + chromedriver, selenium from
./dev test's virtualenv): sign in by the dev link, stream a chat, run Python that draws a chart,
upload a file. Prints what the page showed as JSON; screenshots go to the given directory.

usage: playground.py BASE_URL TOKEN SCREENSHOT_DIR UPLOAD_FILE
"""
import json
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, token, shots, upload = sys.argv[1:5]
# Waits are for conditions (text arrived, image decoded), generous so a loaded machine passes.
WAIT = 120

options = webdriver.ChromeOptions()
options.binary_location = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
             "--window-size=1400,1000", "--no-first-run", "--disable-extensions"]:
    options.add_argument(flag)
service = Service(os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver"))
driver = webdriver.Chrome(service=service, options=options)
wait = WebDriverWait(driver, WAIT)
text = lambda id: driver.find_element(By.ID, id).text
result = {}
try:
    driver.get(f"{base}/#token={token}")
    wait.until(lambda d: text("who").startswith("signed in"))
    result["who"] = text("who")
    result["address_after_sign_in"] = driver.current_url

    # Chat: the answer streams in from the fake provider; usage shows when the stream ends.
    driver.find_element(By.ID, "prompt").send_keys("Hello from the browser")
    driver.find_element(By.ID, "send").click()
    wait.until(lambda d: text("usage") != "")
    messages = driver.find_elements(By.CSS_SELECTOR, "#messages .message")
    result["messages"] = [{"class": m.get_attribute("class"), "text": m.text} for m in messages]
    result["usage"] = text("usage")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#conversation-list li")) > 0)
    result["conversations"] = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#conversation-list li")]
    driver.save_screenshot(os.path.join(shots, "chat.png"))

    # Code: the default program draws a chart with matplotlib and prints "drawn".
    driver.find_element(By.ID, "run").click()
    wait.until(lambda d: d.execute_script(
        "const i = document.querySelector('#charts img'); return !!i && i.complete && i.naturalWidth > 0;"))
    image = driver.find_element(By.CSS_SELECTOR, "#charts img")
    result["code"] = {
        "stdout": text("stdout"),
        "status": text("code-status"),
        "image_width": driver.execute_script("return document.querySelector('#charts img').naturalWidth;"),
        "image_src": image.get_attribute("src")[:200],
        "image_alt": image.get_attribute("alt"),
    }
    driver.save_screenshot(os.path.join(shots, "code.png"))

    # Upload: the file appears in the list.
    name = os.path.basename(upload)
    driver.find_element(By.ID, "file").send_keys(upload)
    driver.find_element(By.ID, "upload").click()
    wait.until(lambda d: any(name in li.text for li in d.find_elements(By.CSS_SELECTOR, "#file-list li")))
    result["files"] = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#file-list li")]
    driver.save_screenshot(os.path.join(shots, "files.png"))
    print(json.dumps(result))
except Exception as e:  # what the page showed, for the test's failure message
    driver.save_screenshot(os.path.join(shots, "failure.png"))
    print(json.dumps({"error": repr(e), "status": driver.find_element(By.ID, "status").text,
                      "partial": result, "page": driver.find_element(By.TAG_NAME, "body").text[:4000]}))
    sys.exit(1)
finally:
    driver.quit()
