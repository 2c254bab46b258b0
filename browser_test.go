package websocket_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/caddy-websocket/caddy-websocket/examples/legacychat"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// chromium starts headless Chromium from Debian's package, or skips the test
// outside CI when it is not installed (CI installs it, and fails instead).
func chromium(t *testing.T, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed (apt-get install -y chromium)")
		}
		t.Skip("chromium is not installed")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
	}
	opts = append(opts, extra...)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	bctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(cancelB)
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return bctx
}

// member opens the chat page in a new tab and joins as name.
func member(t *testing.T, browser context.Context, url, name string) context.Context {
	t.Helper()
	tab, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	return joinIn(t, tab, url, name)
}

// waitText polls until the element's text contains want.
func waitText(sel, want string, d time.Duration) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		end := time.Now().Add(d)
		var got string
		for time.Now().Before(end) {
			// The query waits for the element to exist: bound it too.
			qctx, cancel := context.WithDeadline(ctx, end)
			var err error
			got, err = chromedp.Run(qctx, chromedp.TextContent(chromedp.CSS(sel)))
			cancel()
			if err != nil {
				return fmt.Errorf("%s: %w", sel, err)
			}
			if strings.Contains(got, want) {
				return nil
			}
			time.Sleep(50 * time.Millisecond)
		}
		return fmt.Errorf("%s: want %q, have %q", sel, want, got)
	})
}

func say(tab context.Context, text string) error {
	return chromedp.Do(tab,
		chromedp.SendKeys(chromedp.CSS("#msg"), text),
		chromedp.Click(chromedp.CSS("#send")))
}

func text(t *testing.T, tab context.Context, sel string) string {
	s, err := chromedp.Run(tab, chromedp.TextContent(chromedp.CSS(sel)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestBrowserChatSurvivesSilence is the bar this project clears first: two
// members of the example chat stay silent for three times the backend's
// idle timeout. Through the gateway they keep chatting; through stock
// reverse_proxy the backend drops them and the browser sees 1006.
func TestBrowserChatSurvivesSilence(t *testing.T) {
	browser := chromium(t)
	const idle = 2 * time.Second
	chat := httptest.NewServer(legacychat.New(idle))
	defer chat.Close()
	addrs := wstest.StartCaddyPorts(t, fmt.Sprintf(`http://127.0.0.1:{PORT1} {
		websocket /ws %[1]s {
			client {
				keepalive 300ms
				announce
			}
			backend {
				keepalive 300ms
			}
		}
		reverse_proxy %[1]s
	}
	http://127.0.0.1:{PORT2} {
		reverse_proxy %[1]s
	}`, hostOf(chat)), 2)
	gateway, stock := "http://"+addrs[0]+"/", "http://"+addrs[1]+"/"

	gAlice := member(t, browser, gateway, "alice")
	gBob := member(t, browser, gateway, "bob")
	sAlice := member(t, browser, stock, "carol")
	sBob := member(t, browser, stock, "dave")

	time.Sleep(3 * idle)

	// Through the gateway: still connected, and the room still works.
	if err := say(gAlice, "anyone there?"); err != nil {
		t.Fatalf("alice after %v of silence through the gateway: %v (status %q)", 3*idle, err, text(t, gAlice, "#status"))
	}
	if err := chromedp.Do(gBob, waitText("#log", "alice: anyone there?", 5*time.Second)); err != nil {
		t.Fatalf("bob after %v of silence through the gateway: %v (status %q)", 3*idle, err, text(t, gBob, "#status"))
	}
	if err := say(gBob, "yes"); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(gAlice, waitText("#log", "bob: yes", 5*time.Second)); err != nil {
		t.Fatalf("alice: %v", err)
	}
	t.Logf("gateway: alice %q, bob %q", text(t, gAlice, "#status"), text(t, gBob, "#status"))
	if err := chromedp.Do(gAlice, waitText("#announced", "ping=0.3; pong=15", 2*time.Second)); err != nil {
		t.Fatalf("announced timeouts on the page: %v", err)
	}

	// Through stock reverse_proxy: dropped by the backend's idle timeout.
	for _, tab := range []context.Context{sAlice, sBob} {
		if err := chromedp.Do(tab, waitText("#status", "disconnected (code 1006", 5*time.Second)); err != nil {
			t.Fatalf("stock reverse_proxy: %v", err)
		}
	}
	t.Logf("stock reverse_proxy: carol %q, dave %q", text(t, sAlice, "#status"), text(t, sBob, "#status"))

	if dir := os.Getenv("SCREENSHOT_DIR"); dir != "" {
		if png, err := chromedp.Run(gBob, chromedp.FullScreenshot(100)); err == nil {
			os.WriteFile(filepath.Join(dir, "chat-gateway.png"), png, 0o644)
		}
	}
}

// TestBrowserTerminateSurvivesRestart: in terminate mode Chromium negotiates
// permessage-deflate with the gateway (the legacy backend can't), long
// messages round-trip compressed, and both members stay in the room while
// the backend is killed and restarted.
func TestBrowserTerminateSurvivesRestart(t *testing.T) {
	browser := chromium(t)
	chat := startChat(t, "")
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket /ws %[1]s {
			mode terminate
			backend {
				on_close reconnect
				reconnect_window 10s
			}
		}
		reverse_proxy %[1]s
	}`, chat.addr))
	url := "http://" + addr + "/"
	alice := member(t, browser, url, "alice")
	bob := member(t, browser, url, "bob")
	ext, err := chromedp.Run(alice, chromedp.Evaluate[string]("ws.extensions"))
	if err != nil || !strings.Contains(ext, "permessage-deflate") {
		t.Fatalf("negotiated extensions %q, %v", ext, err)
	}
	long := strings.Repeat("all work and no play makes jack a dull boy ", 40)
	if err := say(alice, long); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(bob, waitText("#log", "alice: "+strings.TrimSpace(long[:200]), 5*time.Second)); err != nil {
		t.Fatalf("compressed round trip: %v", err)
	}

	chat.kill()
	time.Sleep(300 * time.Millisecond)
	back := startChat(t, chat.addr)
	// Both gateways' legs re-dial on their own backoff; a message broadcast
	// before bob's leg is back would not reach him (the chat keeps no
	// history), so wait until the room is whole again.
	for end := time.Now().Add(10 * time.Second); back.chat.Members() < 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d members back after 10s", back.chat.Members())
		}
	}

	if err := say(alice, "still here after the restart"); err != nil {
		t.Fatalf("alice: %v (status %q)", err, text(t, alice, "#status"))
	}
	if err := chromedp.Do(bob, waitText("#log", "alice: still here after the restart", 10*time.Second)); err != nil {
		t.Fatalf("bob after the backend restart: %v (status %q)", err, text(t, bob, "#status"))
	}
	for _, tab := range []context.Context{alice, bob} {
		if s := text(t, tab, "#status"); !strings.HasPrefix(s, "connected as") {
			t.Fatalf("status %q", s)
		}
	}
	t.Logf("through a backend restart: alice %q, bob %q, extensions %q", text(t, alice, "#status"), text(t, bob, "#status"), ext)
}
