// Local stand-in for Ground Truth's crowd-html-elements (https://assets.crowd.aws/crowd-html-elements.js),
// served by `dicomflow label start`. It implements what the dicomflow template uses: <crowd-form> (collects
// the named inputs into an object and posts it to the portal, after a cancellable "submit" event),
// <crowd-button form-action="submit"> (honours the disabled attribute) and the instruction elements.
(function () {
  'use strict';
  const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content || '';

  function collect(form) {
    const out = {};
    for (const el of form.querySelectorAll('input[name], textarea[name], select[name]')) {
      if (el.type === 'checkbox' || el.type === 'radio') {
        if (el.type === 'checkbox') {
          out[el.name] = out[el.name] || {};
          out[el.name][el.value || 'on'] = el.checked;
        } else if (el.checked) out[el.name] = el.value;
      } else out[el.name] = el.value;
    }
    return out;
  }

  class CrowdButton extends HTMLElement {
    connectedCallback() {
      this.setAttribute('role', 'button');
      if (!this.hasAttribute('tabindex')) this.tabIndex = 0;
      this.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') this.click(); });
    }
    get disabled() { return this.hasAttribute('disabled'); }
    set disabled(v) { if (v) this.setAttribute('disabled', ''); else this.removeAttribute('disabled'); }
  }

  class CrowdForm extends HTMLElement {
    connectedCallback() {
      this.addEventListener('click', (e) => {
        const b = e.target.closest('crowd-button[form-action="submit"]');
        if (b && !b.disabled) this.submit();
      });
      const addDefault = () => {
        if (!this.querySelector('crowd-button[form-action="submit"]')) {
          const b = document.createElement('crowd-button');
          b.setAttribute('form-action', 'submit');
          b.textContent = 'Submit';
          this.append(b);
        }
      };
      if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', addDefault);
      else addDefault();
      this.message = document.createElement('div');
      this.message.className = 'crowd-shim-message';
      this.message.setAttribute('role', 'status');
      this.append(this.message);
    }
    async submit() {
      if (this.busy) return;
      const ev = new Event('submit', { cancelable: true });
      if (!this.dispatchEvent(ev)) return;
      this.busy = true;
      this.message.textContent = 'Submitting…';
      try {
        const r = await fetch(meta('dicomflow-submit-url'), {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ assignmentId: meta('dicomflow-assignment'), answer: collect(this) }),
        });
        const body = await r.json().catch(() => ({}));
        if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
        window.dicomflowSubmitted = body;
        this.message.textContent = 'Submitted. Loading the next task…';
        window.location.assign(body.next || '/');
      } catch (err) {
        this.message.textContent = `Submit failed: ${err.message}`;
        window.dicomflowSubmitError = err.message;
      } finally {
        this.busy = false;
      }
    }
  }

  class Hidden extends HTMLElement {}
  class Instructions extends HTMLElement {
    connectedCallback() { this.style.display = 'block'; this.style.margin = '8px 0'; }
  }
  customElements.define('crowd-button', CrowdButton);
  customElements.define('crowd-form', CrowdForm);
  customElements.define('short-instructions', Instructions);
  customElements.define('full-instructions', Hidden);
  const style = document.createElement('style');
  style.textContent = `crowd-button{display:inline-block;margin:8px 0;padding:6px 18px;border-radius:4px;
    background:#2f6fd0;color:#fff;cursor:pointer;font:600 14px system-ui,sans-serif;user-select:none}
    crowd-button[disabled]{background:#7d8590;cursor:not-allowed;opacity:.7}
    full-instructions{display:none}.crowd-shim-message{margin:6px 0;font:14px system-ui,sans-serif}`;
  document.head.append(style);
})();
