# DreamForge: the host side. Each target works or stops with one clear line.
SHELL := /bin/bash
PYTHON ?= python3
DF ?= df
COMPOSE ?= docker compose

.PHONY: help inspect-env gpu-cdi-generate up down logs status test openapi

help:
	@echo "targets: inspect-env gpu-cdi-generate up down logs status test openapi"

inspect-env:
	@command -v $(DF) >/dev/null || { echo "make inspect-env: df is not installed (pip install -e .)"; exit 1; }
	@$(DF) env inspect

gpu-cdi-generate:
	@command -v $(DF) >/dev/null || { echo "make gpu-cdi-generate: df is not installed (pip install -e .)"; exit 1; }
	@$(DF) gpu cdi-generate

define need_compose
	@command -v docker >/dev/null || { echo "make $@: docker is not installed (https://docs.docker.com/engine/install/)"; exit 1; }
	@$(COMPOSE) version >/dev/null 2>&1 || { echo "make $@: Docker Compose v2 is missing (docker compose version failed)"; exit 1; }
endef

up:
	$(need_compose)
	@test -f .env || { echo "make up: no .env here: cp .env.example .env and set its secrets"; exit 1; }
	@$(COMPOSE) up -d --build --wait

down:
	$(need_compose)
	@$(COMPOSE) down

logs:
	$(need_compose)
	@$(COMPOSE) logs -f --tail=200

status:
	$(need_compose)
	@$(COMPOSE) ps
	@$(COMPOSE) exec -T api df status || echo "make status: the api service is not running (make up)"

test:
	@$(PYTHON) -m pytest

openapi:
	@$(DF) openapi
