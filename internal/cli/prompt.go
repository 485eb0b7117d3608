package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/huh"
	"github.com/charmbracelet/x/term"

	"github.com/m1-agent/m1/internal/store"
)

// The decisions m1 approve offers.
const (
	choiceApprove = "approve"
	choiceReject  = "reject"
	choiceSkip    = "skip"
)

// maxReasonLen is the longest rejection reason the prompt takes.
const maxReasonLen = 1000

// isTerminal reports whether v is a terminal (an *os.File on a tty).
func isTerminal(v any) bool {
	f, ok := v.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(f.Fd())
}

// interactive shows each pending proposal and asks for a decision, until
// no pending proposal is left that was not shown (approving one lets the
// planner propose the next step, which is shown in turn) or the operator
// stops (Esc, Ctrl-C). It ends with the tally.
func (a *approver) interactive(ctx context.Context) {
	seen := map[string]bool{}
	defer func() { fmt.Fprintln(a.c.stdout, a.tally.String()) }()
	for {
		ps, err := a.pending(ctx)
		if err != nil {
			a.failed(err)
			return
		}
		n := 0
		for _, p := range ps {
			if seen[p.ID] {
				continue
			}
			seen[p.ID] = true
			n++
			if stop := a.decide(ctx, p); stop {
				return
			}
		}
		if n == 0 {
			if len(seen) == 0 {
				fmt.Fprintln(a.c.stdout, "no pending proposals")
			}
			return
		}
	}
}

// decide shows one proposal, asks, and carries out the decision. It
// returns true when the review must stop.
func (a *approver) decide(ctx context.Context, p store.Proposal) (stop bool) {
	risk, _ := a.riskOf(p)
	r := review{p: p, risk: risk}
	if p.RunID != "" {
		r.cost = a.runCost(ctx, p.RunID)
	}
	r.canon, r.err = canonicalArgs(p)
	r.print(a.c.stdout, a.now())

	choice, reason, err := ask(ctx, a.c.stdin, a.c.stdout, "Proposal "+escapeTerminal(p.ID)+": your decision", r.err == nil)
	switch {
	case errors.Is(err, huh.ErrUserAborted):
		fmt.Fprintln(a.c.stdout, "stopped: the proposals not decided stay pending")
		return true
	case ctx.Err() != nil: // SIGINT or SIGTERM
		fmt.Fprintln(a.c.stderr, "m1 approve: interrupted: the proposals not decided stay pending")
		a.tally.note(exitError)
		return true
	case err != nil:
		a.failed(fmt.Errorf("prompt: %w", err))
		return true
	}
	switch choice {
	case choiceApprove:
		d, err := a.approve(ctx, p, a.sign.actor)
		a.report(true, "approved", p.ID, d, err)
	case choiceReject:
		d, err := a.reject(ctx, p.ID, reason)
		a.report(false, "rejected", p.ID, d, err)
	default:
		fmt.Fprintf(a.c.stdout, "skipped proposal %s: it stays pending\n", escapeTerminal(p.ID))
		a.tally.skipped++
	}
	return false
}

// runCost is the run's LLM cost so far, as $0.0123, or why it is unknown.
func (a *approver) runCost(ctx context.Context, runID string) string {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	run, err := a.client.Run(ctx, runID)
	if err != nil {
		return "unknown: " + escapeTerminal(err.Error())
	}
	return formatUSD(run.Usage.CostUSD)
}

// ask asks for a decision on a proposal: approve (offered only when
// canApprove), reject, which then asks for a reason, or skip, the default.
// huh.ErrUserAborted means the operator pressed Esc or Ctrl-C.
func ask(ctx context.Context, in io.Reader, out io.Writer, title string, canApprove bool) (choice, reason string, err error) {
	choice = choiceSkip
	var opts []huh.Option[string]
	if canApprove {
		opts = append(opts, huh.NewOption("approve: sign an approval token for exactly this call", choiceApprove))
	}
	opts = append(opts,
		huh.NewOption("reject: refuse it, with a reason", choiceReject),
		huh.NewOption("skip: leave it pending", choiceSkip))
	sel := huh.NewSelect[string]().Title(title).Options(opts...).Value(&choice)
	if err := runForm(ctx, in, out, huh.NewForm(huh.NewGroup(sel))); err != nil {
		return "", "", err
	}
	if choice != choiceReject {
		return choice, "", nil
	}
	input := huh.NewInput().
		Title("Reason for rejecting (required)").
		CharLimit(maxReasonLen).
		Value(&reason).
		Validate(func(s string) error {
			if strings.TrimSpace(s) == "" {
				return errors.New("a reason is required")
			}
			return nil
		})
	if err := runForm(ctx, in, out, huh.NewForm(huh.NewGroup(input))); err != nil {
		return "", "", err
	}
	return choice, strings.TrimSpace(reason), nil
}

// runForm runs a form on in and out (the command's terminal, not
// necessarily the process's), with Esc as well as Ctrl-C aborting it
// (huh.ErrUserAborted). Signals are left to Main, whose context cancels
// the form.
//
// The form runs as the model of a Bubble Tea program of its own rather
// than through Form.RunWithContext, which ends an aborted form with
// tea.Interrupt: Bubble Tea then shuts down without waiting for its input
// reader, which may still be reading the terminal when the next form
// starts. Quitting (tea.Quit) either way waits for it.
func runForm(ctx context.Context, in io.Reader, out io.Writer, f *huh.Form) error {
	km := huh.NewDefaultKeyMap()
	km.Quit = key.NewBinding(key.WithKeys("ctrl+c", "esc"))
	km.Select.Filter.SetEnabled(false) // three options; and Esc would both clear a filter and quit
	f = f.WithKeyMap(km).WithShowHelp(true)
	f.SubmitCmd, f.CancelCmd = tea.Quit, tea.Quit
	_, err := tea.NewProgram(f,
		tea.WithInput(in),
		tea.WithOutput(out),
		tea.WithContext(ctx),
		tea.WithoutSignalHandler(),
	).Run()
	switch {
	case err != nil:
		return err
	case f.State == huh.StateAborted:
		return huh.ErrUserAborted
	case f.State != huh.StateCompleted:
		return errors.New("the form ended without an answer")
	}
	return nil
}
