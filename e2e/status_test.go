package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// chromium runs headless Chromium on url with the extra flags and returns
// its standard output.
func chromium(t *testing.T, bin, url string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-quic", "--disable-dev-shm-usage", "--user-data-dir=" + t.TempDir(),
		"--window-size=1280,900",
	}, extra...)
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", extra, err, tail(stderr.String(), 20))
	}
	return string(out)
}

// TestStatusPage renders GET /between/status in headless Chromium: a
// screenshot is written (kept at os.TempDir()/between-status.png) and the
// DOM, after the page's scripts ran, lists every backend with its state.
func TestStatusPage(t *testing.T) {
	bin := needTool(t, "chromium", "chromium")
	a, b, c := nameBackend(t, "a"), nameBackend(t, "b"), nameBackend(t, "c")
	down := freeAddr(t) // nothing listens: the health check marks it down
	web := staticServer(shared(freeAddr(t)), a.addr, b.addr, down)
	web["healthcheck"] = map[string]any{"kind": "ping", "interval": "200ms", "timeout": "100ms"}
	// The page is served by the between_status HTTP handler: Caddy's admin
	// endpoint refuses a browser's navigation requests (no allowed Origin).
	site := freeAddr(t)
	var apps map[string]any
	if err := json.Unmarshal([]byte(between(map[string]any{
		"web": web,
		"db":  staticServer(shared(freeAddr(t)), c.addr),
	})), &apps); err != nil {
		t.Fatal(err)
	}
	apps["http"] = map[string]any{"servers": map[string]any{"status": map[string]any{
		"listen": []string{site},
		"routes": []any{map[string]any{"handle": []any{map[string]any{"handler": "between_status"}}}},
	}}}
	appsJSON, _ := json.Marshal(apps)
	inst := startCaddy(t, string(appsJSON))
	waitFor(t, 10*time.Second, "backends discovered", func() bool {
		return len(statsBackends(t, inst, "web")) == 3 && len(statsBackends(t, inst, "db")) == 1
	})
	setState(t, inst, "web", b.addr, "drain")
	setState(t, inst, "db", c.addr, "maint")
	waitFor(t, 10*time.Second, "the unreachable backend down", func() bool {
		_, body := adminDo(t, inst, "GET", "/between/status", "")
		return strings.Contains(body, `class="backend down" data-backend="`+down+`"`)
	})
	want := map[string]string{a.addr: "ready", b.addr: "drain", down: "ready", c.addr: "maint"}
	url := "http://" + site + "/between-status"

	shot := filepath.Join(os.TempDir(), "between-status.png")
	os.Remove(shot)
	chromium(t, bin, url, "--screenshot="+shot, "--virtual-time-budget=3000")
	fi, err := os.Stat(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	if fi.Size() < 10_000 {
		t.Errorf("screenshot %s is only %d bytes", shot, fi.Size())
	}
	t.Logf("status page screenshot: %s (%d bytes)", shot, fi.Size())

	// A virtual time budget past the 2 s refresh makes the DOM the one the
	// page's script built from the JSON endpoints.
	dom := chromium(t, bin, url, "--dump-dom", "--virtual-time-budget=5000")
	if !strings.Contains(dom, "Between status") {
		t.Fatalf("DOM is not the status page:\n%s", tail(dom, 30))
	}
	for _, name := range []string{"web", "db"} {
		if !strings.Contains(dom, `data-name="`+name+`"`) {
			t.Errorf("DOM lacks handler %s", name)
		}
	}
	row := regexp.MustCompile(`(?s)<tr class="backend (\w+)" data-backend="([^"]+)">(.*?)</tr>`)
	seen := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(dom, -1) {
		addr, class, cells := m[2], m[1], m[3]
		state, ok := want[addr]
		if !ok {
			t.Errorf("DOM lists unknown backend %s", addr)
			continue
		}
		seen[addr] = true
		if !strings.Contains(cells, `<td class="state"><span class="badge b-`+state+`">`+state+`</span></td>`) {
			t.Errorf("backend %s: state %s not shown in %s", addr, state, cells)
		}
		wantClass := state
		if state == "ready" {
			wantClass = "up"
			if addr == down {
				wantClass = "down"
			}
		}
		if class != wantClass {
			t.Errorf("backend %s: row class %q, want %q", addr, class, wantClass)
		}
	}
	for addr := range want {
		if !seen[addr] {
			t.Errorf("DOM lacks backend %s:\n%s", addr, tail(dom, 40))
		}
	}
	// The script sets the "updated" time after a successful refresh (an
	// ISO time with milliseconds; the server renders whole seconds) and
	// an error text after a failed one.
	updated := regexp.MustCompile(`<span id="updated">([^<]*)</span>`).FindStringSubmatch(dom)
	if updated == nil || !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`).MatchString(updated[1]) {
		t.Errorf("the page did not refresh itself from its JSON: updated = %q", updated)
	}
}
