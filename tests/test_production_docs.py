"""The README's production set-up works as written: its nginx blocks (one web node; several behind an
upstream) pass `nginx -t` and answer an over-large body with the service's JSON 413; its systemd
units pass `systemd-analyze verify`.

Each check runs the real tool and is skipped, with the reason, where the tool is not installed
(CI installs nginx: `.ci/run`).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
import requests
import urllib3

from helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX = "/usr/sbin/nginx"


def production_section():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    return readme.split("## Running in production", 1)[1].split("\n## ", 1)[0]


def readme_block(language, containing=""):
    """The one ```language block of the README's "Running in production" section that contains `containing`."""
    blocks = [block for block in re.findall(rf"```{language}\n(.*?)```", production_section(), re.DOTALL)
              if containing in block]
    assert len(blocks) == 1, f"expected one {language} block with {containing!r}, found {len(blocks)}"
    return blocks[0]


# The README's two nginx blocks, each told by a line only it has.
NGINX_BLOCKS = ["proxy_pass http://127.0.0.1:8080;", "upstream imgsmaller {"]


@pytest.fixture(params=NGINX_BLOCKS, ids=["one-web-node", "upstream"])
def nginx_block(request):
    return readme_block("nginx", request.param)


@pytest.fixture
def nginx_conf(tmp_path, nginx_block):
    """conf(listen=None): an nginx.conf in tmp_path holding a README block, with a throw-away certificate."""
    if not os.path.exists(NGINX):
        pytest.skip(f"{NGINX} is missing: apt-get install -y nginx-light to check the README's nginx block")
    if not shutil.which("openssl"):
        pytest.skip("openssl is missing: it makes the throw-away certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=img.example.com", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / name).mkdir()

    def conf(listen=None):
        block = nginx_block
        block = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", block)
        block = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", block)
        if listen:
            block = block.replace("listen 443 ssl;", f"listen {listen} ssl;")
        temp_paths = "".join(f"    {name}_temp_path {tmp_path / name};\n"
                             for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        path = tmp_path / "nginx.conf"
        path.write_text(f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\nevents {{}}\n"
                        f"http {{\n    access_log off;\n{temp_paths}{block}}}\n")
        return path

    return conf


def nginx(*args, tmp):
    return [NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), *args]


def test_the_readme_nginx_block_passes_nginx_t_as_written(nginx_conf, nginx_block, tmp_path):
    block = nginx_block
    assert "ssl_certificate " in block and "ssl_certificate_key " in block and "error_page 413" in block
    result = subprocess.run(nginx("-t", "-c", str(nginx_conf()), tmp=tmp_path), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_answers_an_over_large_body_with_the_services_json(nginx_conf, tmp_path):
    port = free_port()
    with open(tmp_path / "nginx.out", "wb") as output:
        process = subprocess.Popen(nginx("-c", str(nginx_conf(f"127.0.0.1:{port}")), "-g", "daemon off;",
                                         tmp=tmp_path), stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "nginx.out").read_text()
                time.sleep(0.05)
        with pytest.warns(urllib3.exceptions.InsecureRequestWarning):  # the throw-away certificate
            response = requests.post(f"https://127.0.0.1:{port}/api/v1/compress", data=b"\0" * (15 * 1024 * 1024),
                                     headers={"Host": "img.example.com", "Content-Type": "application/octet-stream"},
                                     verify=False, timeout=30)
    finally:
        process.terminate()
        process.wait(10)
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert list(body) == ["message"] and body["message"].startswith("File too large")


def test_the_systemd_section_creates_the_user_and_gives_it_the_instance_folder():
    section = production_section()
    commands = re.findall(r"```bash\n(.*?)```", section[:section.index("```ini")], re.DOTALL)[-1]  # just before
    assert re.search(r"useradd --system .* imgsmaller", commands)
    assert "chown -R imgsmaller:imgsmaller /srv/imgsmaller/instance" in commands
    unit = readme_block("ini", "app serve")
    assert "User=imgsmaller" in unit and "ReadWritePaths=/srv/imgsmaller/instance" in unit


@pytest.mark.parametrize("command", ["app serve", "app worker"])
def test_the_readme_systemd_units_pass_systemd_analyze_verify(tmp_path, command):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is missing (no systemd here): the unit is checked only where systemd exists")
    # The paths of a real install, moved to this checkout: verify checks that ExecStart exists.
    flask = os.path.join(os.path.dirname(sys.executable), "flask")
    unit = readme_block("ini", command).replace("/srv/imgsmaller/.venv/bin/flask", flask)
    unit = unit.replace("/srv/imgsmaller", ROOT)
    path = tmp_path / "imgsmaller.service"
    path.write_text(unit)
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if "imgsmaller.service" in line]
    assert result.returncode == 0 and problems == [], result.stderr
