package e2e

// The way users build Between: xcaddy v0.4.5 builds Caddy v2.11.9 with this
// checkout as the plugin; the binary lists the layer4 modules and runs the
// quickstart example.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	xcaddyVersion = "v0.4.5"
	xcaddyCaddy   = "v2.11.9"
	// a cold build (modules cached, build cache empty) takes about 4 minutes
	xcaddyBuildLimit = 20 * time.Minute
)

// xcGo returns the go command, and PATH with its directory first (xcaddy
// runs "go" from PATH).
func xcGo(t *testing.T) (goBin, path string) {
	t.Helper()
	// go test puts its own GOROOT/bin first in PATH
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command in PATH: %v", err)
	}
	return goBin, filepath.Dir(goBin) + string(os.PathListSeparator) + os.Getenv("PATH")
}

// xcEnv is the environment for go and xcaddy.
func xcEnv(path string) []string {
	env := []string{"PATH=" + path}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	return env
}

// xcInstall returns xcaddy, installed once per machine under the user cache
// directory.
func xcInstall(t *testing.T, goBin, path string) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "between-xcaddy", xcaddyVersion)
	bin := filepath.Join(dir, "xcaddy")
	if isExecutable(bin) {
		return bin
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "install", "github.com/caddyserver/xcaddy/cmd/xcaddy@"+xcaddyVersion)
	cmd.Dir = t.TempDir() // outside this module
	cmd.Env = append(xcEnv(path), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install xcaddy@%s: %v\n%s", xcaddyVersion, err, out)
	}
	if !isExecutable(bin) {
		t.Fatalf("go install put no xcaddy in %s", dir)
	}
	return bin
}

// xcBuild builds Caddy with this checkout as the Between plugin, the way
// the README tells users to.
func xcBuild(t *testing.T) string {
	goBin, path := xcGo(t)
	xcaddy := xcInstall(t, goBin, path)
	out := filepath.Join(t.TempDir(), "caddy")
	limit := xcaddyBuildLimit
	if d, ok := t.Deadline(); ok && time.Until(d)-30*time.Second < limit {
		limit = time.Until(d) - 30*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, xcaddy, "build", xcaddyCaddy,
		"--with", "github.com/caddy-between/between@v0.0.0="+repoRoot(),
		"--output", out)
	cmd.Dir = t.TempDir()
	cmd.Env = xcEnv(path)
	// on timeout, stop xcaddy and the go commands it started: they run in
	// a process group of their own
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("xcaddy build did not finish in %s; output:\n%s", limit, tail(log.String(), logTail()))
	}
	if err != nil {
		t.Fatalf("xcaddy build: %v; output:\n%s", err, tail(log.String(), logTail()))
	}
	t.Logf("xcaddy %s build %s --with %s: %s", xcaddyVersion, xcaddyCaddy, repoRoot(), time.Since(start).Round(time.Second))
	return out
}

func TestXcaddyBuild(t *testing.T) {
	curl := needTool(t, "curl", "curl")
	bin := xcBuild(t)

	t.Run("list-modules", func(t *testing.T) {
		out, err := exec.Command(bin, "list-modules").CombinedOutput()
		if err != nil {
			t.Fatalf("list-modules: %v\n%s", err, out)
		}
		have := map[string]bool{}
		for _, l := range strings.Split(string(out), "\n") {
			have[strings.TrimSpace(l)] = true
		}
		for _, m := range []string{"layer4", "layer4.handlers.between", "layer4.handlers.tls", "layer4.handlers.proxy_protocol", "between", "admin.api.between"} {
			if !have[m] {
				t.Errorf("list-modules lacks %s", m)
			}
		}
	})

	t.Run("quickstart", func(t *testing.T) {
		text, err := os.ReadFile(filepath.Join(repoRoot(), "examples", "quickstart.caddyfile"))
		if err != nil {
			t.Fatal(err)
		}
		// the example's fixed ports become free ones, and the admin
		// endpoint (default localhost:2019) gets a free port too
		lb := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		cf := string(text)
		for old, nu := range map[string]string{
			"127.0.0.1:3000": lb,
			"127.0.0.1:3001": fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			"127.0.0.1:3002": fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		} {
			if !strings.Contains(cf, old) {
				t.Fatalf("examples/quickstart.caddyfile no longer uses %s; update this test", old)
			}
			cf = strings.ReplaceAll(cf, old, nu)
		}
		global := regexp.MustCompile(`(?m)^\{\s*$`)
		loc := global.FindStringIndex(cf)
		if loc == nil {
			t.Fatal("examples/quickstart.caddyfile has no global options block")
		}
		cf = cf[:loc[1]] + "\n\tadmin " + admin + cf[loc[1]:]
		dir := t.TempDir()
		path := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(path, []byte(cf), 0o600); err != nil {
			t.Fatal(err)
		}

		cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
		var log lockedBuffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
			if t.Failed() {
				t.Logf("caddy output:\n%s", tail(log.String(), logTail()))
			}
		})
		waitFor(t, 15*time.Second, "the quickstart to serve", func() bool {
			select {
			case <-exited:
				t.Fatal("caddy exited")
			default:
			}
			resp, err := http.Get("http://" + admin + "/config/")
			if err != nil {
				return false
			}
			resp.Body.Close()
			c, err := net.DialTimeout("tcp", lb, time.Second)
			if err != nil {
				return false
			}
			c.Close()
			return true
		})

		var got []string
		for range 6 {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			out, err := exec.CommandContext(ctx, curl, "-sS", "--max-time", "5", "http://"+lb+"/").CombinedOutput()
			cancel()
			if err != nil {
				t.Fatalf("curl %s: %v\n%s", lb, err, out)
			}
			got = append(got, strings.TrimSpace(string(out)))
		}
		t.Logf("curl answers: %q", got)
		for i, g := range got {
			if g != "backend 1" && g != "backend 2" {
				t.Fatalf("answer %d = %q, want backend 1 or backend 2", i, g)
			}
			if i > 0 && g == got[i-1] {
				t.Fatalf("answers %q do not alternate between the two backends", got)
			}
		}
	})
}
