package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// exercises run each example for real. Every file in examples/ must have one.
var exercises = map[string]func(t *testing.T, path string){
	"quickstart.caddyfile": exerciseQuickstart,
}

func TestExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(repoRoot(), "examples", "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	for _, path := range files {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			adapter := "caddyfile"
			if strings.HasSuffix(name, ".json") {
				adapter = "json"
			}
			if adapter == "caddyfile" {
				orig, _ := os.ReadFile(path)
				out, err := exec.Command(caddyBin, "fmt", path).Output()
				if err != nil {
					t.Fatalf("caddy fmt: %v", err)
				}
				if string(out) != string(orig) {
					t.Errorf("caddy fmt changes %s; run caddy fmt --overwrite", name)
				}
			}
			if out, err := exec.Command(caddyBin, "validate", "--config", path, "--adapter", adapter).CombinedOutput(); err != nil {
				t.Fatalf("caddy validate: %v\n%s", err, tail(string(out), 10))
			}
			ex, ok := exercises[name]
			if !ok {
				t.Fatalf("example %s has no exercise in e2e/examples_test.go", name)
			}
			ex(t, path)
		})
	}
}

// rewritePorts replaces the example's fixed loopback ports with free ones.
func rewritePorts(t *testing.T, text string, ports ...int) (string, map[int]int) {
	m := map[int]int{}
	for _, p := range ports {
		m[p] = freePort(t)
		text = strings.ReplaceAll(text, fmt.Sprintf("127.0.0.1:%d", p), fmt.Sprintf("127.0.0.1:%d", m[p]))
	}
	return text, m
}

func exerciseQuickstart(t *testing.T, path string) {
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text, ports := rewritePorts(t, string(orig), 3000, 3001, 3002)
	text = strings.Replace(text, "{\n", "{\n\tadmin ADMIN\n", 1)
	startCaddyfile(t, text)
	lb := fmt.Sprintf("http://127.0.0.1:%d/", ports[3000])
	// one TCP connection per request: Between balances connections
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 3 * time.Second}
	var got []string
	for range 4 {
		var body string
		waitFor(t, 5*time.Second, "the load balancer to answer", func() bool {
			resp, err := client.Get(lb)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			body = string(b)
			return resp.StatusCode == 200
		})
		got = append(got, body)
	}
	if got[0] == got[1] || got[0] != got[2] || got[1] != got[3] {
		t.Errorf("quickstart answers %q: want the two backends in turn", got)
	}
	for _, b := range got[:2] {
		if b != "backend 1" && b != "backend 2" {
			t.Errorf("unexpected answer %q", b)
		}
	}
}
