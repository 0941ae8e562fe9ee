// Draws the dashboard's charts with Chart.js from the numbers the page hands over with
// json_script. The tables beside each chart hold the same numbers, so a page without
// JavaScript (or with Chart.js missing) still says everything.
"use strict";

(function () {
    const SUCCEEDED = "#3d9a5f";
    const FAILED = "#c4453c";
    const RUNNING = "#9aa5b1";

    function pageData() {
        const element = document.getElementById("dashboard-chart-data");
        return element ? JSON.parse(element.textContent) : null;
    }

    function adminColor(name, fallback) {
        // The admin's colours are CSS variables that follow light and dark mode.
        const value = getComputedStyle(document.documentElement).getPropertyValue(name);
        return value.trim() || fallback;
    }

    function show(canvas) {
        canvas.parentElement.hidden = false;
        return canvas;
    }

    function tasksPerDay(canvas, days) {
        const bars = (label, data, color) => ({ label, data, backgroundColor: color, stack: "tasks" });
        return new Chart(show(canvas), {
            type: "bar",
            data: {
                labels: days.labels,
                datasets: [
                    bars("Succeeded", days.succeeded, SUCCEEDED),
                    bars("Failed", days.failed, FAILED),
                    bars("Still running", days.running, RUNNING),
                ],
            },
            options: {
                responsive: true,
                maintainAspectRatio: false,
                plugins: { title: { display: true, text: "Tasks per day" } },
                scales: {
                    x: { stacked: true },
                    y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
                },
            },
        });
    }

    function successPerChannel(canvas, channels) {
        return new Chart(show(canvas), {
            type: "bar",
            data: {
                labels: channels.map((channel) => channel.label),
                datasets: [{
                    label: "Success rate",
                    data: channels.map((channel) => channel.rate),
                    backgroundColor: SUCCEEDED,
                }],
            },
            options: {
                indexAxis: "y",
                responsive: true,
                maintainAspectRatio: false,
                plugins: {
                    title: { display: true, text: "Success rate per channel (finished tasks)" },
                    legend: { display: false },
                    tooltip: { callbacks: { label: (item) => `${item.parsed.x}%` } },
                },
                scales: { x: { min: 0, max: 100, ticks: { callback: (value) => `${value}%` } } },
            },
        });
    }

    document.addEventListener("DOMContentLoaded", function () {
        const data = pageData();
        if (!window.Chart || !data) {
            return;
        }
        Chart.defaults.animation = false; // operators read numbers; nothing to wait for
        Chart.defaults.color = adminColor("--body-quiet-color", "#666");
        Chart.defaults.borderColor = adminColor("--hairline-color", "#e8e8e8");
        Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;

        const days = document.getElementById("tasks-per-day-chart");
        if (days && data.days) {
            tasksPerDay(days, data.days);
        }
        const channels = document.getElementById("channel-success-chart");
        if (channels && data.channels && data.channels.length) {
            successPerChannel(channels, data.channels);
        }
    });
})();
